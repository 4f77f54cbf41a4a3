"""Upload/download throughput through the storage service next to direct object-store calls on the same store,
and next to the transport's floor.

    python bench/storage_bench.py [--size-mb 20] [--rounds 5] [--s3]

The service runs as its own process (``python -m services.storage``), as in production; "direct" is this
process calling the same object-store backend the service uses. "floor" is a bare gRPC server process
(``bench/bare_stream.py``) that takes and sends the same bytes in the same chunks, with the same channel
options, and does nothing else: no service can stream faster than that between two processes. Local folder
always; with ``--s3`` also an S3 server on loopback (moto's server mode).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from bare_stream import OPTIONS
from roles import TOKEN, role

from services.common.domain import Lineage, LoraSpec
from services.common.objectstore import ObjectStoreSettings, open_object_store
from services.storage.client import StorageClient
from services.storage.dev_s3 import dev_s3_server
from services.storage.layout import SEND_CHUNK_BYTES


async def _rate(rounds: int, size: int, op: Callable[[int], Awaitable[object]]) -> float:
    """Best-of-rounds MB/s (the first round warms connections and caches)."""
    best = float("inf")
    for i in range(rounds):
        started = time.perf_counter()
        await op(i)
        best = min(best, time.perf_counter() - started)
    return size / best / 1e6


async def bench_floor(workdir: Path, size: int, rounds: int) -> dict[str, float]:
    """MB/s of a bare gRPC upload and download of ``size`` bytes between this process and another."""
    data = random.Random(1).randbytes(size)
    with role("bare", {}, workdir, module="bare_stream") as bare:
        async with grpc.aio.insecure_channel(bare.addr, options=OPTIONS) as channel:
            upload = channel.stream_unary("/bench.Bare/Upload")
            download = channel.unary_stream("/bench.Bare/Download")

            async def put(_: int) -> None:
                pieces = (data[o : o + SEND_CHUNK_BYTES] for o in range(0, size, SEND_CHUNK_BYTES))
                assert int(await upload(iter(pieces))) == size

            async def get(_: int) -> None:
                assert sum([len(piece) async for piece in download(str(size).encode())]) == size

            return {"upload": await _rate(rounds, size, put), "download": await _rate(rounds, size, get)}


async def bench_backend(label: str, fields: dict[str, str], workdir: Path, size: int, rounds: int) -> list[tuple]:
    data = random.Random(0).randbytes(size)
    files = {"adapter_config.json": b'{"r": 16}', "adapter_model.safetensors": data}
    store = open_object_store(ObjectStoreSettings(**fields))
    direct_put = await _rate(rounds, size, lambda i: store.put(f"bench/direct/{i}.bin", data))
    direct_get = await _rate(rounds, size, lambda i: store.get(f"bench/direct/{i}.bin"))
    env = {f"CLAAS_{k.upper()}": v for k, v in fields.items()}
    with role("storage", env, workdir) as storage:
        client = StorageClient.connect(storage.addr, token=TOKEN)
        try:
            await client.create_adapter("bench/adapter", "smollm2-135m", LoraSpec(rank=16, alpha=32))
            # One job id per commit: a commit that repeats a job id returns that job's version (idempotent).
            service_put = await _rate(
                rounds, size, lambda i: client.upload_version("bench/adapter", i, files, Lineage(job_id=f"bench-{i}"))
            )
            service_get = await _rate(rounds, size, lambda i: client.read_version("bench/adapter", i + 1))
        finally:
            await client.close()
    return [(label, "upload", direct_put, service_put), (label, "download", direct_get, service_get)]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=20.0, help="size of the adapter file, MB")
    parser.add_argument("--rounds", type=int, default=5, help="transfers per measurement (best one counts)")
    parser.add_argument("--s3", action="store_true", help="also measure an S3 server on loopback (moto)")
    args = parser.parse_args()
    size = int(args.size_mb * 1e6)
    rows = []
    with tempfile.TemporaryDirectory(prefix="claas-bench-") as tmp:
        workdir = Path(tmp)
        floor = await bench_floor(workdir, size, args.rounds)
        rows += await bench_backend("local", {"store_url": str(workdir / "store")}, workdir, size, args.rounds)
        if args.s3:
            with dev_s3_server() as s3:
                rows += await bench_backend("s3 (moto)", s3.fields("claas-bench"), workdir, size, args.rounds)
    print(f"{args.size_mb:g} MB adapter file, best of {args.rounds}; MB/s")
    print(f"{'store':<10} {'op':<9} {'direct':>8} {'floor':>8} {'service':>8} {'/direct':>8} {'/floor':>7}")
    for label, op, direct, service in rows:
        line = f"{direct:>8.0f} {floor[op]:>8.0f} {service:>8.0f} {service / direct:>8.2f} {service / floor[op]:>7.2f}"
        print(f"{label:<10} {op:<9} {line}")


if __name__ == "__main__":
    asyncio.run(main())
