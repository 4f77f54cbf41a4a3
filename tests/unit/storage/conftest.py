"""Storage through real gRPC, parametrised over both object-store backends (local folder; S3 via moto)."""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common.domain import Lineage, LoraSpec, StepMetrics
from services.common.objectstore import ObjectStore, open_object_store
from services.storage.client import StorageClient
from services.storage.core import AdapterStore
from services.storage.dev_s3 import DevS3, dev_s3_server
from services.storage.server import StorageServer, build_server
from services.storage.settings import StorageSettings

TOKEN = "storage-test-token"
LORA = LoraSpec(rank=8, alpha=16, target_modules=("q_proj", "v_proj"))


@pytest.fixture(scope="session")
def dev_s3() -> Iterator[DevS3]:
    with dev_s3_server() as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def store_fields(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Settings fields naming a fresh, empty store: a folder, or a new bucket on the S3 server."""
    if request.param == "local":
        return {"store_url": str(tmp_path / "store")}
    s3: DevS3 = request.getfixturevalue("dev_s3")
    return s3.fields(f"claas-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def settings(store_fields: dict[str, str]) -> StorageSettings:
    # One name for every server of a test, so that a restarted one is the same replica; two that run at once
    # need names of their own.
    return StorageSettings(
        host="127.0.0.1", port=0, internal_token=TOKEN, grace_period_s=2, storage_id="storage-0", **store_fields
    )


@pytest.fixture
def store(settings: StorageSettings) -> ObjectStore:
    """The object store the service uses, for looking behind its back."""
    return open_object_store(settings)


@dataclass
class Running:
    server: StorageServer
    target: str

    @property
    def core(self) -> AdapterStore:
        return self.server.core


@asynccontextmanager
async def serve(settings: StorageSettings, store: ObjectStore | None = None) -> AsyncIterator[Running]:
    """A storage server in this process, started the way ``__main__`` starts it (recovery included)."""
    server, ready, on_stop = build_server(settings, store=store)
    port = await server.start()
    try:
        await ready()
        await server.set_serving(True)
        yield Running(server, f"127.0.0.1:{port}")
    finally:
        await server.stop()
        if on_stop is not None:
            await on_stop()


@asynccontextmanager
async def connect(target: str, token: str = TOKEN) -> AsyncIterator[StorageClient]:
    client = StorageClient.connect(target, token=token)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def storage(settings: StorageSettings) -> AsyncIterator[Running]:
    async with serve(settings) as running:
        yield running


@pytest.fixture
async def client(storage: Running) -> AsyncIterator[StorageClient]:
    async with connect(storage.target) as client:
        yield client


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def adapter_files(size: int = 4096, seed: int = 0, *, optimizer: bool = False) -> dict[str, bytes]:
    """A version's files in PEFT layout (random bytes standing in for the tensors)."""
    files = {
        "adapter_config.json": b'{"r": 8, "lora_alpha": 16, "peft_type": "LORA"}',
        "adapter_model.safetensors": payload(size, seed),
    }
    if optimizer:
        files["optimizer.safetensors"] = payload(size // 2, seed + 1)
    return files


_JOBS = itertools.count(1)


def lineage(job: str = "") -> Lineage:
    """A version's lineage; each call without ``job`` is another job (a job id commits once)."""
    return Lineage(
        job_id=job or f"job-{next(_JOBS)}",
        completion_ids=("cmpl-1",),
        feedback=("be more concise",),
        metrics=(StepMetrics(step=1, loss=0.25, tokens=12),),
        extra={"source": "test"},
    )
