"""A writer killed between any two object writes leaves the old head intact; a restart cleans up."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO

import pytest

from services.common import errors
from services.common.objectstore import ObjectStore
from services.storage.core import AdapterStore
from services.storage.layout import adapter_prefix, version_prefix, versions_prefix
from services.storage.settings import StorageSettings
from services.storage.upload import SpoolLimits
from tests.unit.storage.conftest import LORA, TOKEN, adapter_files, connect, lineage, serve

NAME = "acme/bot"
REPO = Path(__file__).resolve().parents[3]
#: Object writes of one version of three files: reservation, three files, manifest, commit.
WRITES_PER_VERSION = 6


@asynccontextmanager
async def crashing_storage(
    settings: StorageSettings, writes_allowed: int
) -> AsyncIterator[tuple[str, subprocess.Popen]]:
    """A storage subprocess over the same store that is SIGKILLed before write ``writes_allowed + 1``."""
    env = dict(os.environ)
    env.update({f"CLAAS_{k.upper()}": str(v) for k, v in settings.model_dump(exclude_none=True).items() if k != "port"})
    env.update(
        CLAAS_PORT="0",
        CLAAS_S3_ACCESS_KEY=settings.s3_access_key.get_secret_value(),
        CLAAS_S3_SECRET_KEY=settings.s3_secret_key.get_secret_value(),
        CLAAS_LOG_LEVEL="warning",
        CLAAS_TEST_CRASH_AFTER_WRITES=str(writes_allowed),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.unit.storage.crashing_storage"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = await asyncio.to_thread(process.stdout.readline)
        assert port.strip(), f"storage subprocess exited with {process.wait()} before serving"
        yield f"127.0.0.1:{port.strip()}", process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()


async def _seed(settings: StorageSettings) -> dict[str, bytes]:
    v1 = adapter_files(seed=1, optimizer=True)
    async with serve(settings) as running, connect(running.target) as client:
        await client.create_adapter(NAME, "smollm2-135m", LORA)
        await client.upload_version(NAME, 0, v1, lineage("job-1"))
    return v1


@pytest.mark.parametrize("writes_allowed", range(WRITES_PER_VERSION))
async def test_killed_writer_leaves_old_head_and_restart_cleans(
    settings: StorageSettings, store: ObjectStore, writes_allowed: int
) -> None:
    v1 = await _seed(settings)

    async with crashing_storage(settings, writes_allowed) as (target, process), connect(target) as client:
        with pytest.raises(errors.ClaasError):
            await client.upload_version(NAME, 1, adapter_files(seed=2, optimizer=True), lineage("job-2"))
        assert await asyncio.to_thread(process.wait) == -signal.SIGKILL

    # Until its clean-up ran, a restarted storage serves nothing; then it sees only version 1.
    reader = AdapterStore(
        store, limits=SpoolLimits(max_version_bytes=1 << 30, memory_bytes=1 << 20), replica=settings.replica()
    )
    with pytest.raises(errors.Unavailable, match="recovering"):
        await reader.get_adapter(NAME)
    await reader.recover()
    assert (await reader.get_adapter(NAME)).head == 1
    assert [v.version for v in (await reader.list_versions(NAME))[0]] == [1]
    with pytest.raises(errors.NotFound):
        await reader.read_version(NAME, 2)
    reader.close()

    async with serve(settings) as running, connect(running.target) as client:
        assert (await client.get_adapter(NAME)).head_version == 1
        assert (await client.read_version(NAME, 0, include_optimizer=True))[1] == v1
        assert await store.list(version_prefix(NAME, 2)) == []
        assert all(k.startswith(version_prefix(NAME, 1)) for k in await store.list(versions_prefix(NAME)))
        following = await client.upload_version(NAME, 1, adapter_files(seed=3), lineage("job-3"))
    # Once the reservation was written, number 2 is never handed out again.
    assert following.version == (2 if writes_allowed == 0 else 3)


class FailingStore:
    """Raises instead of writing after ``writes_allowed`` puts, like an object store that went away."""

    def __init__(self, inner: ObjectStore, writes_allowed: int) -> None:
        self._inner = inner
        self.writes_allowed = writes_allowed

    def _write(self) -> None:
        if self.writes_allowed == 0:
            raise OSError("object store went away")
        self.writes_allowed -= 1

    async def put(self, key: str, data: bytes) -> None:
        self._write()
        await self._inner.put(key, data)

    async def put_file(self, key: str, source: BinaryIO, size: int) -> None:
        self._write()
        await self._inner.put_file(key, source, size)

    async def put_if_absent(self, key: str, data: bytes) -> str:
        self._write()
        return await self._inner.put_if_absent(key, data)

    async def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        self._write()
        return await self._inner.put_if_match(key, data, etag)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


@pytest.mark.parametrize("writes_allowed", range(WRITES_PER_VERSION))
async def test_failed_write_is_invisible_and_the_next_write_succeeds(
    settings: StorageSettings, store: ObjectStore, writes_allowed: int
) -> None:
    v1 = await _seed(settings)
    failing = FailingStore(store, writes_allowed=10**6)
    async with serve(settings, store=failing) as running, connect(running.target) as client:
        failing.writes_allowed = writes_allowed
        with pytest.raises(errors.ClaasError) as failure:
            await client.upload_version(NAME, 1, adapter_files(seed=2, optimizer=True), lineage("job-2"))
        failing.writes_allowed = 10**6

        message = failure.value.message
        assert message.startswith("internal error in /claas.v1.AdapterStoreService/PutVersion (request ")
        assert "object store went away" not in message  # the cause stays in storage's log
        assert (await client.get_adapter(NAME)).head_version == 1
        assert [v.version for v in await client.list_versions(NAME)] == [1]
        assert (await client.read_version(NAME, 0, include_optimizer=True))[1] == v1
        following = await client.upload_version(NAME, 1, adapter_files(seed=3), lineage("job-3"))
        assert following.version == (2 if writes_allowed == 0 else 3)
        kept = {version_prefix(NAME, 1), version_prefix(NAME, following.version)}
        assert {k[: k.rindex("/") + 1] for k in await store.list(versions_prefix(NAME))} == kept


async def test_restart_removes_leftovers_of_an_interrupted_delete(
    settings: StorageSettings, store: ObjectStore
) -> None:
    await _seed(settings)
    await store.delete(f"{adapter_prefix(NAME)}adapter.json")  # a delete killed after its first write

    async with serve(settings) as running, connect(running.target, TOKEN) as client:
        assert await store.list(adapter_prefix(NAME)) == []
        assert await client.list_adapters() == []


class _SlowListing:
    """An object store whose first listing (crash recovery's) waits until the test lets it go on."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self.listing = asyncio.Event()
        self.go_on = asyncio.Event()

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    async def list(self, prefix: str) -> list[str]:
        self.listing.set()
        await self.go_on.wait()
        return await self._store.list(prefix)


async def test_storage_serves_no_call_before_its_crash_recovery_ended(store: ObjectStore) -> None:
    """Hole: storage served while recovery ran, which could delete an adapter created meanwhile as leftovers."""
    slow = _SlowListing(store)
    core = AdapterStore(slow, limits=SpoolLimits(max_version_bytes=1 << 30, memory_bytes=1 << 20), replica="storage-0")
    recovery = asyncio.create_task(core.recover())
    await slow.listing.wait()

    for call in (lambda: core.create_adapter(NAME, "smollm2-135m", LORA), lambda: core.list_adapters()):
        with pytest.raises(errors.Unavailable, match="storage is recovering from its last stop; retry"):
            await call()
    slow.go_on.set()
    await recovery

    await core.create_adapter(NAME, "smollm2-135m", LORA)
    assert [r.name for r in (await core.list_adapters())[0]] == [NAME]
    core.close()
