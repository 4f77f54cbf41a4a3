"""``TrainerPool`` over three real trainer servers (fake model and teacher each, one real storage): each
adapter's jobs run on its owner, a trainer that is down hands its adapters on, and any pool follows any job."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from services.common.domain import LoraSpec
from services.common.errors import NotFound, Unavailable
from services.common.peers import PeerSet
from services.common.rendezvous import ranked
from services.storage.client import StorageClient
from services.trainer.client import TrainerClient, TrainerPool
from services.trainer.domain import JobState
from tests.unit.trainer.fakes import FakeEngine, FakeTeacher
from tests.unit.trainer.helpers import trainer_service
from tests.unit.trainer.test_client import SAMPLE

ADAPTERS = [f"acme/bot-{i}" for i in range(12)]
CONFIG = {"steps": 1, "guidedRollouts": 0}


class Trainers:
    """Three trainer servers; ``engines[address]`` opened every job that trainer ran."""

    def __init__(self) -> None:
        self.engines: dict[str, FakeEngine] = {}
        self.stops: dict[str, AsyncExitStack] = {}

    @property
    def spec(self) -> str:
        return ",".join(self.engines)

    def ran(self) -> dict[str, set[str]]:
        """The trainers each adapter's jobs ran on (a job opens the adapter's head on its trainer)."""
        where = collections.defaultdict(set)
        for address, engine in self.engines.items():
            for key, _ in engine.opened:
                where[key.partition("@")[0]].add(address)
        return where


@pytest.fixture
async def trainers(storage: StorageClient) -> AsyncIterator[Trainers]:
    made = Trainers()
    async with AsyncExitStack() as outer:
        for _ in range(3):
            stack = await outer.enter_async_context(AsyncExitStack())
            engine = FakeEngine()
            _, server, _ = await stack.enter_async_context(
                trainer_service(storage, engine=engine, teacher=FakeTeacher())
            )
            address = f"127.0.0.1:{server.port}"
            made.engines[address], made.stops[address] = engine, stack
        yield made


@pytest.fixture
async def pool(trainers: Trainers) -> AsyncIterator[TrainerPool]:
    pool = TrainerPool.connect(trainers.spec)
    try:
        yield pool
    finally:
        await pool.close()


async def train(pool: TrainerPool, adapter: str, key: str) -> JobState:
    job = await pool.submit_job(adapter, [SAMPLE], CONFIG, key)
    return [view async for view in pool.watch_job(job.job_id)][-1].state


async def test_each_adapters_jobs_run_on_its_owner_only(trainers: Trainers, pool: TrainerPool) -> None:
    for adapter in ADAPTERS:
        await pool.init_adapter(adapter, LoraSpec(rank=4, alpha=8))
        for round_ in range(2):
            assert await train(pool, adapter, f"{adapter}-{round_}") is JobState.SUCCEEDED

    ran = trainers.ran()
    assert all(len(ran[adapter]) == 1 for adapter in ADAPTERS), ran
    members = list(trainers.engines)
    assert {a: ran[a].pop() for a in ADAPTERS} == {a: ranked(a, members)[0] for a in ADAPTERS}
    assert sum(len(e.opened) for e in trainers.engines.values()) == 2 * len(ADAPTERS)


async def test_a_trainer_that_is_down_hands_its_adapters_to_the_next_in_their_order(
    trainers: Trainers, pool: TrainerPool, storage: StorageClient
) -> None:
    members = list(trainers.engines)
    for adapter in ADAPTERS:
        await pool.init_adapter(adapter, LoraSpec(rank=4, alpha=8))
    gone = members[0]
    await trainers.stops[gone].aclose()
    for adapter in ADAPTERS:
        assert await train(pool, adapter, f"{adapter}-after") is JobState.SUCCEEDED

    order = {a: ranked(a, members) for a in ADAPTERS}
    ran = trainers.ran()
    for adapter in ADAPTERS:
        expected = order[adapter][1] if order[adapter][0] == gone else order[adapter][0]
        assert ran[adapter] == {expected}, adapter
        assert (await storage.get_adapter(adapter)).head_version == 2


async def test_another_pool_follows_a_job_it_did_not_submit(trainers: Trainers, pool: TrainerPool) -> None:
    await pool.init_adapter(ADAPTERS[0], LoraSpec(rank=4, alpha=8))
    job = await pool.submit_job(ADAPTERS[0], [SAMPLE], CONFIG, "key-1")
    other = TrainerPool.connect(trainers.spec)  # another proxy replica, or this one after a restart
    try:
        final = [view async for view in other.watch_job(job.job_id)][-1]
        assert (final.job_id, final.state) == (job.job_id, JobState.SUCCEEDED)
        assert (await other.get_job(job.job_id)).state is JobState.SUCCEEDED
        with pytest.raises(NotFound, match="job 'job-nope' not found on any trainer"):
            await other.get_job("job-nope")
    finally:
        await other.close()


async def test_the_same_key_on_the_owner_is_the_same_job(pool: TrainerPool) -> None:
    await pool.init_adapter(ADAPTERS[0], LoraSpec(rank=4, alpha=8))
    first = await pool.submit_job(ADAPTERS[0], [SAMPLE], CONFIG, "key-1")
    again = await pool.submit_job(ADAPTERS[0], [SAMPLE], CONFIG, "key-1")
    assert again.job_id == first.job_id


async def test_with_no_trainer_ready_a_submit_is_unavailable_with_a_reason() -> None:
    async def nobody(name: str) -> list[str]:
        return []  # the headless Service publishes no ready pod

    pool = TrainerPool(PeerSet("srv:_grpc._tcp.claas-trainer", resolver=nobody), TrainerClient.connect)
    try:
        with pytest.raises(Unavailable, match=r"no trainer in 'srv:_grpc\._tcp\.claas-trainer' is ready"):
            await pool.submit_job(ADAPTERS[0], [SAMPLE], CONFIG, "key-1")
    finally:
        await pool.close()


async def test_with_every_trainer_down_a_submit_is_unavailable_and_a_job_cannot_be_found(
    trainers: Trainers, pool: TrainerPool
) -> None:
    for stack in trainers.stops.values():
        await stack.aclose()
    with pytest.raises(Unavailable, match=r"none of the 3 trainers .* is reachable"):
        await pool.submit_job(ADAPTERS[0], [SAMPLE], CONFIG, "key-1")
    with pytest.raises(Unavailable, match="job 'job-1' is on no reachable trainer"):
        await pool.get_job("job-1")
