"""Peak memory of storage and the proxy under parallel transfers of a large version, against one transfer.

    python bench/memory_bench.py [--size-mb 20] [--parallel 64]

Storage and the proxy run as their own processes on loopback (local folder store). Exports are HTTP
downloads of the zip (``GET /v1/adapters/<name>/export``) through the proxy, which streams them from
storage; uploads are ``PutVersion`` calls straight to storage (as the trainer commits), each to its own
adapter so that none loses the head race. Before each measurement the kernel's peak-RSS mark of both
processes is reset (``/proc/<pid>/clear_refs``); the figure is ``VmHWM`` after it. The ratio is the
parallel peak over the one-call peak (the goal: at most 1.5).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from roles import TOKEN, Role, free_port, role

from services.common.domain import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, Lineage, LoraSpec
from services.common.model import PACKAGED_MODEL
from services.proxy.keys import add_api_key
from services.storage.client import StorageClient

TENANT = "bench"


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc (not Linux?)")


async def peaks(roles: dict[str, Role], calls: int, one: Callable[[int], Awaitable[None]]) -> dict[str, float]:
    """Peak RSS of each role while ``calls`` calls of ``one`` run at once."""
    for r in roles.values():
        reset_peak(r.pid)
    await asyncio.gather(*(one(i) for i in range(calls)))
    return {name: peak_mib(r.pid) for name, r in roles.items()}


async def run(args: argparse.Namespace, workdir: Path) -> list[tuple[str, str, float, float]]:
    size = int(args.size_mb * 1e6)
    weights = random.Random(0).randbytes(size)
    files = {ADAPTER_CONFIG_FILE: b'{"r": 16}', ADAPTER_WEIGHTS_FILE: weights}
    key = add_api_key(workdir / "keys.json", TENANT)
    http_port = free_port()
    rows = []
    with role("storage", {"CLAAS_STORE_URL": str(workdir / "store"), "CLAAS_STORE_FSYNC": "false"}, workdir) as st:
        client = StorageClient.connect(st.addr, token=TOKEN)
        names = [f"{TENANT}/a{i}" for i in range(args.parallel)]
        for name in names:
            await client.create_adapter(name, PACKAGED_MODEL, LoraSpec(rank=16, alpha=32))
        await client.upload_version(names[0], 0, files, Lineage(job_id="seed"))
        proxy_env = {
            "CLAAS_HTTP_PORT": str(http_port),
            "CLAAS_STORAGE_ADDR": st.addr,
            "CLAAS_TRAINER_ADDR": "127.0.0.1:9",  # exports and uploads never reach the trainer
            "CLAAS_VLLM_URL": f"http://127.0.0.1:{free_port()}",  # nor vLLM
            "CLAAS_API_KEYS_FILE": str(workdir / "keys.json"),
            "CLAAS_STORE_URL": str(workdir / "rollouts"),
            "CLAAS_ADAPTER_DIR": str(workdir / "adapters"),
            "CLAAS_WATCH_HEADS": "false",
            # All of them staged at once (a tenant may hold a quarter): the figure is for every call in flight.
            "CLAAS_MAX_PARALLEL_EXPORTS": str(4 * args.parallel),
        }
        with role("proxy", proxy_env, workdir) as px:
            roles = {"storage": st, "proxy": px}
            limits = httpx.Limits(max_connections=args.parallel)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=600, limits=limits) as http:

                async def export(_: int) -> None:
                    received = 0
                    url = f"/v1/adapters/{names[0]}/export"
                    async with http.stream("GET", url, headers={"authorization": f"Bearer {key}"}) as response:
                        response.raise_for_status()
                        async for piece in response.aiter_bytes():
                            received += len(piece)
                    if received < size:
                        raise RuntimeError(f"export gave {received} bytes, fewer than the {size} of the weights")

                await export(0)  # warm-up: imports, connections, caches
                one = await peaks(roles, 1, export)
                many = await peaks(roles, args.parallel, export)
                rows += [("export", name, one[name], many[name]) for name in roles]

            heads = dict.fromkeys(names, 0)
            heads[names[0]] = 1

            async def upload(i: int) -> None:
                name = names[i]
                heads[name] = (await client.upload_version(name, heads[name], files, Lineage())).version

            await upload(0)
            one = await peaks(roles, 1, upload)
            many = await peaks(roles, args.parallel, upload)
            rows.append(("upload", "storage", one["storage"], many["storage"]))
        await client.close()
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=20.0, help="size of the adapter's weights file, MB")
    parser.add_argument("--parallel", type=int, default=64, help="calls at once in the parallel measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="claas-memory-") as tmp:
        rows = await run(args, Path(tmp))
    print(f"{args.size_mb:g} MB version; peak RSS (VmHWM) in MiB")
    print(f"{'op':<8} {'process':<8} {'1 call':>8} {f'{args.parallel} calls':>9} {'ratio':>6}")
    for op, name, one, many in rows:
        print(f"{op:<8} {name:<8} {one:>8.0f} {many:>9.0f} {many / one:>6.2f}")


if __name__ == "__main__":
    asyncio.run(main())
