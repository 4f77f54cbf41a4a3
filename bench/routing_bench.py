"""Two proxy replicas routing chats by adapter, each with its own vLLM, as real processes on loopback (issue 17).

    python bench/routing_bench.py [--chats 40] [--adapters 4] [--max-loaded 2] [--spill 4]
        [--latency-rounds 20] [--keep DIR]

Storage (a local folder), 2 vLLM servers and 2 proxies, each proxy with one vLLM and room for ``--max-loaded``
adapters in it (``CLAAS_MAX_LOADED_ADAPTERS``, vLLM's ``--max-loras``/``--max-cpu-loras``). ``--adapters``
adapters of one tenant (random LoRA weights, so each answers differently, named so that the replicas own them
evenly) are put in storage. Then:

1. routing on: ``--chats`` chats, each to a random proxy with a random adapter (seeded), and the LoRA loads
   both proxies made; a stream and a plain answer through a forward against the same from the owner, at
   temperature 0; a client that leaves a forwarded stream, and the owner's vLLM requests still running;
   ``--spill`` + 2 chats of one adapter sent to its owner at once (its limit is ``--spill``), and what spilled;
   chat latency sent to the owner (direct) and to the other replica (forwarded), interleaved;
   the other proxy SIGKILLed while chats go to the one left, and how many vLLM requests they made;
2. routing off (``CLAAS_ROUTE_BY_ADAPTER=false``, both proxies restarted, fresh adapters): the same chats and
   their loads.

It prints the figures and exits 1 if a check fails: every chat answered, loads with routing on at most one
per adapter plus one per adapter that spilled, a forwarded answer equal to the direct one, the owner's vLLM
request ended once its client left, every chat after the kill answered with one vLLM request each.
About 4 minutes on 2 CPU cores with the defaults, 2 of them starting vLLM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import secrets
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from services.cli.stack import ServiceProcess
from services.common.domain import Lineage, LoraSpec
from services.common.model import PACKAGED_MODEL, resolve_base_model
from services.common.net import free_port
from services.common.rendezvous import ranked
from services.common.vllm_server import VllmOptions
from services.proxy.keys import add_api_key
from services.storage.client import StorageClient

TENANT = "bench"
PROMPTS = ("Say hello.", "Name a colour.", "What is two plus two?", "Name a fruit.")
STORY = "Tell me a very long story about a lighthouse keeper, with many chapters."
#: How long a left stream's vLLM request may take to end (polling vLLM's metrics, not a synchronisation).
CANCEL_WITHIN_S = 5.0


class Fleet:
    """Storage, 2 vLLM servers and 2 proxies; the proxies can be started again with other settings."""

    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.root = root
        self.token = secrets.token_urlsafe(24)
        vllm_key = secrets.token_urlsafe(24)
        self.model = resolve_base_model(PACKAGED_MODEL)
        keys_file = root / "api_keys.json"
        self.key = add_api_key(keys_file, TENANT)
        storage_port = free_port()
        self.storage_addr = f"127.0.0.1:{storage_port}"
        common = {
            "CLAAS_HOST": "127.0.0.1",
            "CLAAS_INTERNAL_TOKEN": self.token,
            "CLAAS_LOG_FORMAT": "json",
            "CLAAS_GRACE_PERIOD_S": "3",
            "CLAAS_STORAGE_ADDR": self.storage_addr,
        }
        python = [sys.executable, "-m"]
        env = common | {"CLAAS_PORT": str(storage_port), "CLAAS_STORE_URL": str(root / "store")}
        self.storage = ServiceProcess(
            "storage", [*python, "services.storage"], env, self.storage_addr, self._log("storage")
        )
        self.vllms: list[ServiceProcess] = []
        self.proxies: list[ServiceProcess] = []
        self.grpc: list[str] = []
        self.http: list[str] = []
        self.metrics: list[str] = []
        grpc_ports = [free_port(), free_port()]
        self.grpc = [f"127.0.0.1:{port}" for port in grpc_ports]
        for n, port in enumerate(grpc_ports):
            vllm = VllmOptions(model=self.model, served_name=PACKAGED_MODEL, port=free_port(), api_key=vllm_key,
                               max_loras=args.max_loaded, max_cpu_loras=args.max_loaded)  # fmt: skip
            self.vllms.append(ServiceProcess(f"vllm-{n}", vllm.command(), vllm.environment(), vllm.url,
                                             self._log(f"vllm-{n}")))  # fmt: skip
            http_port, metrics_port = free_port(), free_port()
            self.http.append(f"http://127.0.0.1:{http_port}")
            self.metrics.append(f"http://127.0.0.1:{metrics_port}/metrics")
            env = common | {
                "CLAAS_PORT": str(port),
                "CLAAS_HTTP_PORT": str(http_port),
                "CLAAS_METRICS_PORT": str(metrics_port),
                "CLAAS_VLLM_URL": vllm.url,
                "CLAAS_VLLM_API_KEY": vllm_key,
                "CLAAS_API_KEYS_FILE": str(keys_file),
                "CLAAS_ADAPTER_DIR": str(root / f"proxy-{n}-adapters"),
                "CLAAS_BASE_MODEL": PACKAGED_MODEL,
                "CLAAS_MAX_LOADED_ADAPTERS": str(args.max_loaded),
                "CLAAS_PROXY_PEERS": ",".join(self.grpc),
                "CLAAS_PROXY_PEER_ADDR": f"127.0.0.1:{port}",
                "CLAAS_SPILL_IN_FLIGHT": str(args.spill),
                "CLAAS_TRAINER_ADDR": "127.0.0.1:9",  # chats only: no trainer is asked
            }
            self.proxies.append(ServiceProcess(f"proxy-{n}", [*python, "services.proxy"], env, self.grpc[n],
                                               self._log(f"proxy-{n}")))  # fmt: skip

    def _log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    async def up(self) -> None:
        for process in (*self.vllms, self.storage):
            process.start()
        await asyncio.gather(*(p.wait_healthy() for p in (*self.vllms, self.storage)))
        await self.start_proxies(routing=True)

    async def start_proxies(self, *, routing: bool) -> None:
        for proxy in self.proxies:
            proxy.signal(signal.SIGTERM)
            proxy.env["CLAAS_ROUTE_BY_ADAPTER"] = str(routing).lower()
            proxy.start()
        await asyncio.gather(*(p.wait_healthy() for p in self.proxies))

    def down(self) -> None:
        for process in (*self.proxies, self.storage, *self.vllms):
            process.signal(signal.SIGTERM)

    def owner(self, adapter: str) -> int:
        return self.grpc.index(ranked(adapter, self.grpc)[0])


def random_lora(model_dir: str, folder: Path, seed: int) -> dict[str, bytes]:
    """PEFT files of a rank-8 LoRA with small random B (seeded), so that each adapter answers its own way."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, weight in peft.named_parameters():
            if "lora_B" in name:
                weight.normal_(0.0, 0.02)
    peft.save_pretrained(folder)
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def spread_names(fleet: Fleet, prefix: str, count: int) -> list[str]:
    """``count`` adapter names that the replicas own evenly. Rendezvous hashing spreads few adapters unevenly
    (4 over 2 replicas split 2:2 only 3 times in 8), and a replica that owned 3 with 2 slots would reload them
    whatever the routing: the names are picked so that the count measures routing, not the hash's luck."""
    share = -(-count // len(fleet.grpc))
    owned = {addr: 0 for addr in fleet.grpc}
    names = []
    for index in range(10_000):
        name = f"{prefix}-{index}"
        owner = ranked(f"{TENANT}/{name}", fleet.grpc)[0]
        if owned[owner] < share:
            owned[owner] += 1
            names.append(name)
            if len(names) == count:
                return names
    raise RuntimeError("no even spread of names found")


async def put_adapters(fleet: Fleet, names: list[str]) -> None:
    client = StorageClient.connect(fleet.storage_addr, token=fleet.token)
    try:
        for index, name in enumerate(names):
            files = random_lora(fleet.model, fleet.root / "lora" / name, seed=index)
            await client.create_adapter(f"{TENANT}/{name}", PACKAGED_MODEL, LoraSpec(rank=8, alpha=16))
            await client.upload_version(f"{TENANT}/{name}", 0, files, Lineage(extra={"source": "routing bench"}))
    finally:
        await client.close()


async def metric(url: str, name: str, **labels: str) -> float:
    """The sum of a counter's or gauge's samples on a /metrics page (those with ``labels``)."""
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(url)).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (name, f"{name}_total") and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


class Chats:
    """A tenant's HTTP client of both proxies."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        headers = {"authorization": f"Bearer {fleet.key}"}
        self.http = [httpx.AsyncClient(base_url=url, headers=headers, timeout=300) for url in fleet.http]

    async def close(self) -> None:
        for client in self.http:
            await client.aclose()

    async def chat(self, proxy: int, adapter: str, prompt: str, max_tokens: int = 8) -> str:
        body = {"model": adapter, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                "max_tokens": max_tokens}  # fmt: skip
        response = await self.http[proxy].post("/v1/chat/completions", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"chat of {adapter} on proxy-{proxy}: {response.status_code} {response.text[:200]}")
        return response.json()["choices"][0]["message"]["content"]

    async def stream(self, proxy: int, adapter: str, prompt: str, max_tokens: int, *, leave_after: int = 0) -> str:
        """The streamed text; with ``leave_after`` the client leaves after that many deltas."""
        body = {"model": adapter, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                "max_tokens": max_tokens, "stream": True}  # fmt: skip
        text, deltas = [], 0
        async with self.http[proxy].stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                raise RuntimeError(f"stream of {adapter} on proxy-{proxy}: {response.status_code}")
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                for choice in json.loads(line.removeprefix("data: "))["choices"]:
                    piece = (choice.get("delta") or {}).get("content") or ""
                    if piece:
                        text.append(piece)
                        deltas += 1
                if leave_after and deltas >= leave_after:
                    break
        return "".join(text)


def sequence(chats: int, adapters: int) -> list[tuple[int, int, str]]:
    """The run's chats: (proxy, adapter index, prompt), the same for routing on and off."""
    rng = random.Random(17)
    return [(rng.randrange(2), rng.randrange(adapters), rng.choice(PROMPTS)) for _ in range(chats)]


async def vllm_requests(fleet: Fleet) -> float:
    """Generation requests both vLLM servers finished (the victim's vLLM lives on after its proxy)."""
    return sum([await metric(f"{v.health}/metrics", "vllm:request_success") for v in fleet.vllms])


async def loads(fleet: Fleet) -> list[float]:
    return [await metric(url, "claas_proxy_adapter_loads") for url in fleet.metrics]


async def routing_on(args: argparse.Namespace, fleet: Fleet, chats: Chats, out: dict, failures: list[str]) -> None:
    names = spread_names(fleet, "on", args.adapters)
    await put_adapters(fleet, names)
    for proxy, adapter, prompt in sequence(args.chats, args.adapters):
        await chats.chat(proxy, names[adapter], prompt)
    out["loads_on"] = await loads(fleet)
    out["owners"] = {name: f"proxy-{fleet.owner(f'{TENANT}/{name}')}" for name in names}
    if sum(out["loads_on"]) > args.adapters:
        failures.append(f"routing on: {sum(out['loads_on']):.0f} loads for {args.adapters} adapters")

    name = names[0]
    owner = fleet.owner(f"{TENANT}/{name}")
    other = 1 - owner
    direct = await chats.stream(owner, name, STORY, 32)
    forwarded = await chats.stream(other, name, STORY, 32)
    plain = await chats.chat(other, name, STORY, 32)
    out["stream_equal"] = direct == forwarded == plain
    if not out["stream_equal"]:
        failures.append(f"a forwarded answer differs: direct {direct!r}, forwarded {forwarded!r}, plain {plain!r}")

    vllm_metrics = f"{fleet.vllms[owner].health}/metrics"
    await chats.stream(other, name, STORY, 1500, leave_after=3)
    running_after, left_at = 1.0, time.monotonic()
    while time.monotonic() - left_at < CANCEL_WITHIN_S:
        running_after = await metric(vllm_metrics, "vllm:num_requests_running")
        if not running_after:
            break
        await asyncio.sleep(0.1)  # polling vLLM's gauge for the request to end
    out["cancel_s"] = time.monotonic() - left_at
    if running_after:
        failures.append(
            f"the owner's vLLM still ran {running_after:.0f} requests {CANCEL_WITHIN_S} s after the client left"
        )

    before = await loads(fleet)
    spilled_before = await metric(fleet.metrics[owner], "claas_proxy_forwarded", outcome="spilled")
    burst = args.spill + 2
    await asyncio.gather(*(chats.chat(owner, name, STORY, 48) for _ in range(burst)))
    out["spilled"] = await metric(fleet.metrics[owner], "claas_proxy_forwarded", outcome="spilled") - spilled_before
    out["spill_loads"] = sum(await loads(fleet)) - sum(before)
    out["burst"] = burst
    if out["spill_loads"] > (1 if out["spilled"] else 0):
        failures.append(f"the burst made {out['spill_loads']:.0f} loads with {out['spilled']:.0f} spilled")

    times: dict[str, list[float]] = {"direct": [], "forwarded": []}
    for n in range(args.latency_rounds + 2):
        order = ("direct", "forwarded") if n % 2 else ("forwarded", "direct")
        for path in order:
            started = time.perf_counter()
            await chats.chat(owner if path == "direct" else other, name, PROMPTS[n % len(PROMPTS)], 16)
            if n >= 2:  # two warm-up rounds
                times[path].append(time.perf_counter() - started)
    out["latency"] = {path: (_quantile(v, 50), _quantile(v, 95)) for path, v in times.items()}

    survivor, victim = owner, other
    served_before = await vllm_requests(fleet)
    after_kill = 0
    for n in range(args.adapters * 3):
        if n == 2:
            fleet.proxies[victim].signal(signal.SIGKILL)
        await chats.chat(survivor, names[n % args.adapters], PROMPTS[n % len(PROMPTS)])
        after_kill += n >= 2
    out["kill_chats"] = args.adapters * 3
    out["kill_after"] = after_kill
    out["kill_vllm_requests"] = await vllm_requests(fleet) - served_before
    out["kill_unreachable"] = await metric(fleet.metrics[survivor], "claas_proxy_forwarded", outcome="unreachable")
    victim_owned = [
        n for n in range(2, args.adapters * 3) if fleet.owner(f"{TENANT}/{names[n % args.adapters]}") == victim
    ]
    if victim_owned and not out["kill_unreachable"]:
        failures.append(f"{len(victim_owned)} chats of the killed replica's adapters were not tried there first")
    if out["kill_vllm_requests"] != out["kill_chats"]:
        failures.append(f"{out['kill_chats']} chats after the kill made {out['kill_vllm_requests']:.0f} vLLM requests")


async def routing_off(args: argparse.Namespace, fleet: Fleet, chats: Chats, out: dict) -> None:
    await fleet.start_proxies(routing=False)
    names = spread_names(fleet, "off", args.adapters)
    await put_adapters(fleet, names)
    for proxy, adapter, prompt in sequence(args.chats, args.adapters):
        await chats.chat(proxy, names[adapter], prompt)
    out["loads_off"] = await loads(fleet)


def _quantile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


def report(args: argparse.Namespace, out: dict, failures: list[str]) -> None:
    on, off = sum(out["loads_on"]), sum(out["loads_off"])
    print(f"owners: {out['owners']}")
    each_on, each_off = [int(x) for x in out["loads_on"]], [int(x) for x in out["loads_off"]]
    print(f"loads in {args.chats} chats of {args.adapters} adapters, 2 replicas with {args.max_loaded} slots each: "
          f"routing on {on:.0f} {each_on}, off {off:.0f} {each_off}")  # fmt: skip
    print(f"loads per 100 chats: routing on {100 * on / args.chats:.1f}, off {100 * off / args.chats:.1f}")
    print(f"forwarded answer equals direct (stream, plain, 32 tokens, temperature 0): {out['stream_equal']}")
    print(f"client left a forwarded stream: the owner's vLLM request ended within {out['cancel_s']:.2f} s")
    print(f"spill: {out['burst']} chats of one adapter at once to its owner (limit {args.spill}): "
          f"{out['spilled']:.0f} spilled, {out['spill_loads']:.0f} extra loads")  # fmt: skip
    (d50, d95), (f50, f95) = out["latency"]["direct"], out["latency"]["forwarded"]
    print(f"chat latency, 16 tokens, n={args.latency_rounds} each: direct p50 {d50:.1f} ms p95 {d95:.1f} ms; "
          f"forwarded p50 {f50:.1f} ms p95 {f95:.1f} ms; ratio p50 {f50 / d50:.3f} p95 {f95 / d95:.3f}")  # fmt: skip
    print(f"other replica SIGKILLed: {out['kill_chats']} chats answered ({out['kill_after']} after the kill), "
          f"{out['kill_vllm_requests']:.0f} vLLM requests, "
          f"{out['kill_unreachable']:.0f} forwards found it gone")  # fmt: skip
    if failures:
        print("FAILED:")
        for failure in failures:
            print(f"  {failure}")
    else:
        print("PASSED: every chat answered, loads bounded with routing on, forwards pass through and cancel, "
              "no chat served twice after the kill")  # fmt: skip


async def run(args: argparse.Namespace, root: Path) -> int:
    fleet = Fleet(root, args)
    started = time.monotonic()
    out: dict = {}
    failures: list[str] = []
    try:
        print("starting storage, 2 vLLM, 2 proxies", flush=True)
        await fleet.up()
        print(f"  all up after {time.monotonic() - started:.0f} s", flush=True)
        chats = Chats(fleet)
        try:
            await routing_on(args, fleet, chats, out, failures)
            print(f"  routing on done after {time.monotonic() - started:.0f} s", flush=True)
            await routing_off(args, fleet, chats, out)
        finally:
            await chats.close()
    finally:
        fleet.down()
    report(args, out, failures)
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chats", type=int, default=40, help="chats of the load count, with routing on and off")
    parser.add_argument("--adapters", type=int, default=4, help="adapters in use")
    parser.add_argument("--max-loaded", type=int, default=2, help="adapters each vLLM (and its proxy) holds")
    parser.add_argument("--spill", type=int, default=4, help="the owners' in-flight limit per adapter")
    parser.add_argument("--latency-rounds", type=int, default=20, help="chats of each latency path")
    parser.add_argument("--keep", type=Path, help="keep the logs here instead of a temporary folder")
    args = parser.parse_args()
    if args.chats < 1 or args.adapters < 2 or args.latency_rounds < 2 or args.spill < 1:
        parser.error("--chats, --spill at least 1; --adapters, --latency-rounds at least 2")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        sys.exit(asyncio.run(run(args, args.keep)))
    with tempfile.TemporaryDirectory(prefix="claas-routing-") as root, contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(run(args, Path(root))))


if __name__ == "__main__":
    main()
