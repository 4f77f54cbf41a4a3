"""Two storage servers over one object store: the record's conditional writes decide every race.

Each server orders its own callers with its in-process locks, which do nothing for the other one; what
keeps the head's compare-and-swap exact across them is that the object store itself refuses a record write
whose entity tag is stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO

import pytest

from services.common.errors import Aborted, AlreadyExists, ClaasError, Unavailable
from services.common.objectstore import ObjectStore, open_object_store
from services.storage.client import StorageClient
from services.storage.core import REPLICAS
from services.storage.domain import HeadEvent
from services.storage.layout import version_prefix
from services.storage.settings import StorageSettings
from tests.unit.storage.conftest import LORA, TOKEN, Running, adapter_files, connect, lineage, serve
from tests.unit.storage.test_crash import crashing_storage

NAME = "acme/bot"


def _named(settings: StorageSettings, replica: str) -> StorageSettings:
    return settings.model_copy(update={"storage_id": replica})


@asynccontextmanager
async def _two_replicas(
    settings: StorageSettings,
) -> AsyncIterator[tuple[StorageClient, StorageClient, Running]]:
    """Replicas "left" and "right" on the settings' store: a client of each, and the left one."""
    async with (
        serve(_named(settings, "left")) as left,
        serve(_named(settings, "right")) as right,
        connect(left.target) as to_left,
        connect(right.target) as to_right,
    ):
        yield to_left, to_right, left


async def test_twenty_concurrent_commits_on_one_head_through_two_replicas_have_one_winner(
    settings: StorageSettings,
) -> None:
    async with _two_replicas(settings) as (to_left, to_right, _):
        await to_left.create_adapter(NAME, "smollm2-135m", LORA)
        first = await to_right.upload_version(NAME, 0, adapter_files(seed=1), lineage())
        outcomes = await asyncio.gather(
            *(
                (to_left, to_right)[n % 2].upload_version(NAME, first.version, adapter_files(seed=10 + n), lineage())
                for n in range(20)
            ),
            return_exceptions=True,
        )
        winners = [o for o in outcomes if not isinstance(o, BaseException)]
        assert len(winners) == 1, outcomes
        assert all(isinstance(o, Aborted) for o in outcomes if isinstance(o, BaseException)), outcomes

        for client in (to_left, to_right):
            record = await client.get_adapter(NAME)
            assert record.head_version == winners[0].version
            versions = await client.list_versions(NAME)
            assert [(v.version, v.parent_version) for v in versions] == [
                (first.version, 0),
                (winners[0].version, first.version),
            ]


async def test_the_same_adapter_created_through_two_replicas_at_once_exists_once(settings: StorageSettings) -> None:
    async with _two_replicas(settings) as (to_left, to_right, _):
        outcomes = await asyncio.gather(
            *((to_left, to_right)[n % 2].create_adapter(NAME, "smollm2-135m", LORA) for n in range(10)),
            return_exceptions=True,
        )
        created = [o for o in outcomes if not isinstance(o, BaseException)]
        assert len(created) == 1, outcomes
        assert all(isinstance(o, AlreadyExists) for o in outcomes if isinstance(o, BaseException))
        assert (await to_right.get_adapter(NAME)).generation == created[0].generation


async def test_every_replica_lists_every_adapter_whichever_created_it(settings: StorageSettings) -> None:
    """Hole: each replica listed the names it had indexed itself, so an adapter made on one was missing on the
    other until a restart."""
    async with _two_replicas(settings) as (to_left, to_right, _):
        for n, name in enumerate(["acme/a", "acme/b", "acme/c", "zeta/x"]):
            await (to_left, to_right)[n % 2].create_adapter(name, "smollm2-135m", LORA)
        await to_left.delete_adapter("acme/b")
        for client in (to_left, to_right):
            assert [a.name for a in await client.list_adapters("acme/", page_size=1)] == ["acme/a", "acme/c"]
            assert [a.name for a in await client.list_adapters("", page_size=2)] == ["acme/a", "acme/c", "zeta/x"]
            assert [a.name for a in await client.list_adapters("ze")] == ["zeta/x"]


class _HeldWrites:
    """An object store whose second and later version-file writes wait until the test lets them go on."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self._written = 0
        self.writing = asyncio.Event()
        self.go_on = asyncio.Event()

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    async def put_file(self, key: str, source: BinaryIO, size: int) -> None:
        self._written += 1
        if self._written > 1:
            self.writing.set()
            await self.go_on.wait()
        await self._store.put_file(key, source, size)


async def test_a_replica_starting_leaves_another_replicas_commit_in_flight_alone(
    settings: StorageSettings, store: ObjectStore
) -> None:
    """Hole: recovery at start cleared every reserved version, also one another replica was writing."""
    held = _HeldWrites(open_object_store(settings))
    async with serve(_named(settings, "left"), store=held) as left, connect(left.target) as to_left:
        await to_left.create_adapter(NAME, "smollm2-135m", LORA)
        commit = asyncio.create_task(to_left.upload_version(NAME, 0, adapter_files(seed=1), lineage()))
        await held.writing.wait()
        async with serve(_named(settings, "right")) as right, connect(right.target) as to_right:
            assert await store.list(version_prefix(NAME, 1))  # recovery left it
            with pytest.raises(Aborted, match="in flight on storage replica 'left'; retry in a moment"):
                await to_right.upload_version(NAME, 0, adapter_files(seed=2), lineage())
            held.go_on.set()
            assert (await commit).version == 1
            assert (await to_right.read_version(NAME, 1))[1] == adapter_files(seed=1)


async def test_a_gone_replicas_half_written_version_is_cleared_by_the_next_commit_elsewhere(
    settings: StorageSettings, store: ObjectStore
) -> None:
    async with serve(_named(settings, "right")) as right, connect(right.target) as to_right:
        await to_right.create_adapter(NAME, "smollm2-135m", LORA)
        # Killed after its reservation and one file of version 1.
        async with crashing_storage(_named(settings, "ghost"), 2) as (target, process), connect(target) as ghost:
            with pytest.raises(ClaasError):
                await ghost.upload_version(NAME, 0, adapter_files(seed=1), lineage())
            assert await asyncio.to_thread(process.wait) == -signal.SIGKILL
        with pytest.raises(Aborted, match="in flight on storage replica 'ghost'"):  # its heartbeat is fresh
            await to_right.upload_version(NAME, 0, adapter_files(seed=2), lineage())

        await store.delete(f"{REPLICAS}ghost.json")  # as if its last beat were older than the lease
        committed = await to_right.upload_version(NAME, 0, adapter_files(seed=2), lineage())
        assert committed.version == 2  # the number the gone replica reserved is never handed out again
        assert await store.list(version_prefix(NAME, 1)) == []
        assert [v.version for v in await to_right.list_versions(NAME)] == [2]


async def test_a_replica_that_cannot_renew_its_heartbeat_stops_its_commit_and_gives_its_reservation_back(
    settings: StorageSettings,
) -> None:
    async with _two_replicas(settings) as (to_left, to_right, left):
        await to_left.create_adapter(NAME, "smollm2-135m", LORA)
        left.core._beaten_at = 0.0  # its last heartbeat write landed a lease ago
        with pytest.raises(Unavailable, match="storage replica 'left' could not renew its heartbeat"):
            await to_left.upload_version(NAME, 0, adapter_files(seed=1), lineage())
        # The reservation was given back: the other replica commits at once.
        assert (await to_right.upload_version(NAME, 0, adapter_files(seed=2), lineage())).version == 2


async def test_a_watcher_of_one_replica_sees_the_head_moves_made_through_the_other(settings: StorageSettings) -> None:
    """Hole: WatchHeads streamed only the changes of the replica it was connected to."""
    async with _two_replicas(settings.model_copy(update={"head_poll_s": 0.05})) as (to_left, to_right, _):
        await to_left.create_adapter(NAME, "smollm2-135m", LORA)
        events = to_left.watch_heads("acme/").__aiter__()
        while not (await anext(events)).synced:  # watching from here on
            pass

        async def seen_until(done: Callable[[HeadEvent], bool]) -> None:
            async with asyncio.timeout(30):  # a bound on the feed's delay, far above its 0.05 s polling
                while not done(await anext(events)):
                    pass

        first = await to_right.upload_version(NAME, 0, adapter_files(seed=1), lineage())
        second = await to_right.upload_version(NAME, first.version, adapter_files(seed=2), lineage())
        await seen_until(lambda e: e.head == second.version)
        await to_right.set_head(NAME, second.version, first.version)
        await seen_until(lambda e: e.head == first.version)  # a rollback too
        await to_right.delete_adapter(NAME)
        await seen_until(lambda e: e.deleted and e.name == NAME)


async def test_a_client_of_a_replica_list_spreads_its_calls_and_goes_on_when_one_replica_is_down(
    tmp_path: Path,
) -> None:
    # Each replica on a store of its own here, so that the store a create lands in shows which replica took it.
    def replica(name: str) -> StorageSettings:
        return StorageSettings(
            host="127.0.0.1", port=0, internal_token=TOKEN, storage_id=name, store_url=str(tmp_path / name)
        )

    async with contextlib.AsyncExitStack() as stack:
        left = await stack.enter_async_context(serve(replica("left")))
        right = await stack.enter_async_context(serve(replica("right")))
        both = await stack.enter_async_context(connect(f"{left.target},{right.target}"))
        to_left = await stack.enter_async_context(connect(left.target))
        to_right = await stack.enter_async_context(connect(right.target))
        made: list[str] = []
        for n in range(20):  # round robin over the replicas that are connected: both, within a few calls
            made.append(f"acme/spread-{n}")
            await both.create_adapter(made[-1], "smollm2-135m", LORA)
            on_left = {a.name for a in await to_left.list_adapters()}
            on_right = {a.name for a in await to_right.list_adapters()}
            if on_left and on_right:
                break
        assert on_left and on_right, f"every call went to one replica: {on_left or on_right}"
        assert on_left | on_right == set(made) and not on_left & on_right

        await left.server.stop()
        later = [f"acme/after-{n}" for n in range(4)]
        for name in later:
            await both.create_adapter(name, "smollm2-135m", LORA)
        assert {a.name for a in await to_right.list_adapters()} == on_right | set(later)
