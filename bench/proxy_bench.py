"""Latency of the same chat requests sent straight to vLLM and through the proxy (HTTP and gRPC).

    python bench/proxy_bench.py --vllm-url http://127.0.0.1:8001 [--vllm-api-key KEY] [--rounds 30]
        [--max-tokens 16] [--base]

Storage and the proxy run as their own processes (``python -m services.storage``/``services.proxy``), as in
production; this process is the client. An adapter (version 1, LoRA B = 0) is created in storage first, so
the proxy path includes everything a real chat does: API key, head lookup, lease of the loaded version,
the vLLM call, the rollout write. ``--base`` benchmarks the base model instead. The direct request is the
exact request the proxy forwards (with logprobs and token ids), so the difference is the proxy's own cost.
The three paths are interleaved in one run, in a rotating order, after warm-up requests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from roles import TOKEN, free_port, role

from services.common.auth import bearer_header
from services.common.domain import Lineage, LoraSpec, Message
from services.common.model import PACKAGED_MODEL, resolve_base_model
from services.common.naming import vllm_lora_name
from services.proxy.client import ProxyClient
from services.proxy.domain import ChatRequest, Sampling
from services.proxy.keys import add_api_key
from services.storage.client import StorageClient

ADAPTER = "bench/bot"
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Name three colours of the rainbow."},
]


def zero_lora(model_dir: str, folder: Path) -> dict[str, bytes]:
    """PEFT files of a rank-8 LoRA with B = 0 (answers exactly like the base model)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    get_peft_model(model, config).save_pretrained(folder)
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


async def create_adapter(storage_addr: str, model_dir: str, workdir: Path) -> None:
    files = zero_lora(model_dir, workdir / "lora")
    client = StorageClient.connect(storage_addr, token=TOKEN)
    try:
        await client.create_adapter(ADAPTER, PACKAGED_MODEL, LoraSpec(rank=8, alpha=16))
        await client.upload_version(ADAPTER, 0, files, Lineage(extra={"source": "bench"}))
    finally:
        await client.close()


async def wait_serving(http_url: str) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(600):
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{http_url}/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)  # polling a process we started; nothing to await on
    raise RuntimeError("the proxy never reported serving (is vLLM up?)")


def paths(args: argparse.Namespace, model: str, http_url: str, grpc_addr: str, key: str) -> dict:
    """name -> a coroutine function sending one chat and returning its answer text."""
    direct = httpx.AsyncClient(base_url=args.vllm_url, timeout=120, headers=bearer_header(args.vllm_api_key))
    proxy = httpx.AsyncClient(base_url=http_url, timeout=120, headers={"authorization": f"Bearer {key}"})
    grpc_client = ProxyClient.connect(grpc_addr, token=key, timeout_s=120)
    served = PACKAGED_MODEL if args.base else vllm_lora_name(ADAPTER, 1)
    sampling = {"max_tokens": args.max_tokens, "temperature": 0}
    forwarded = {"model": served, "messages": MESSAGES, "logprobs": True, "return_token_ids": True, **sampling}

    async def vllm() -> str:
        response = await direct.post("/v1/chat/completions", json=forwarded)
        return response.json()["choices"][0]["message"]["content"]

    async def proxy_http() -> str:
        response = await proxy.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES, **sampling})
        return response.json()["choices"][0]["message"]["content"]

    request = ChatRequest(
        model=model,
        messages=tuple(Message(**m) for m in MESSAGES),
        sampling=Sampling(max_tokens=args.max_tokens, temperature=0),
    )

    async def proxy_grpc() -> str:
        return (await grpc_client.inference.chat(request)).text

    return {"vllm direct": vllm, "proxy http": proxy_http, "proxy grpc": proxy_grpc}


async def measure(targets: dict[str, Callable[[], Awaitable[str]]], rounds: int, warmup: int) -> dict[str, list[float]]:
    names = list(targets)
    texts = {}
    for _ in range(warmup):
        for name in reversed(names):  # the proxy first: it loads the adapter that vLLM is then asked for
            texts[name] = await targets[name]()
    if len(set(texts.values())) != 1:
        raise RuntimeError(f"the paths answered differently: {texts}")
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:  # rotate who goes first
            started = time.perf_counter()
            await targets[name]()
            times[name].append(time.perf_counter() - started)
    return times


def report(times: dict[str, list[float]], as_json: bool) -> None:
    def p(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000

    rows = {name: {"p50_ms": p(v, 50), "p95_ms": p(v, 95), "n": len(v)} for name, v in times.items()}
    base = rows["vllm direct"]
    for name in ("proxy http", "proxy grpc"):
        rows[name]["overhead_p50_ms"] = rows[name]["p50_ms"] - base["p50_ms"]
        rows[name]["ratio_p50"] = rows[name]["p50_ms"] / base["p50_ms"]
        rows[name]["ratio_p95"] = rows[name]["p95_ms"] / base["p95_ms"]
    if as_json:
        print(json.dumps(rows))
        return
    print(f"{'path':<12} {'n':>4} {'p50 ms':>9} {'p95 ms':>9} {'p50 ratio':>10} {'p95 ratio':>10} {'+p50 ms':>8}")
    for name, row in rows.items():
        ratio = f"{row.get('ratio_p50', 1):10.3f} {row.get('ratio_p95', 1):10.3f} {row.get('overhead_p50_ms', 0):8.1f}"
        print(f"{name:<12} {row['n']:>4} {row['p50_ms']:9.1f} {row['p95_ms']:9.1f} {ratio}")


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="proxy-bench-") as tmp:
        workdir = Path(tmp)
        key = add_api_key(workdir / "keys.json", "bench")
        http_port = free_port()
        with role("storage", {"CLAAS_STORE_URL": str(workdir / "store")}, workdir) as storage:
            model = PACKAGED_MODEL if args.base else ADAPTER
            if not args.base:
                await create_adapter(storage.addr, resolve_base_model(PACKAGED_MODEL), workdir)
            proxy_env = {
                "CLAAS_HTTP_PORT": str(http_port),
                "CLAAS_STORAGE_ADDR": storage.addr,
                "CLAAS_TRAINER_ADDR": "127.0.0.1:9",  # not used by chat
                "CLAAS_VLLM_URL": args.vllm_url,
                "CLAAS_VLLM_API_KEY": args.vllm_api_key,
                "CLAAS_API_KEYS_FILE": str(workdir / "keys.json"),
                "CLAAS_STORE_URL": str(workdir / "store"),
                "CLAAS_ADAPTER_DIR": str(workdir / "adapters"),
            }
            with role("proxy", proxy_env, workdir) as proxy:
                http_url = f"http://127.0.0.1:{http_port}"
                await wait_serving(http_url)
                targets = paths(args, model, http_url, proxy.addr, key)
                times = await measure(targets, args.rounds, args.warmup)
        print(f"model={model} max_tokens={args.max_tokens} rounds={args.rounds} (interleaved)", file=sys.stderr)
        report(times, args.json)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vllm-url", default="http://127.0.0.1:8001")
    parser.add_argument(
        "--vllm-api-key", default=os.environ.get("CLAAS_VLLM_API_KEY", ""), help="vLLM's API key (CLAAS_VLLM_API_KEY)"
    )
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--base", action="store_true", help="chat with the base model instead of an adapter")
    parser.add_argument("--json", action="store_true")
    asyncio.run(main(parser.parse_args()))
