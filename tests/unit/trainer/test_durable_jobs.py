"""Durable jobs: records in the object store that outlive a trainer, resume, takeover, global idempotency.

The queues are real ``JobManager``s on a real local folder store; the last test runs whole trainers (fake
engine and teacher) against the real storage service.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from claas.v1 import common_pb2, trainer_pb2

from services.common.domain import Message
from services.common.errors import NotFound, ResourceExhausted
from services.common.objectstore import LocalFolderStore
from services.storage.client import StorageClient
from services.trainer.config import SdpoConfig
from services.trainer.domain import JobRequest, JobState, JobView, Sample
from services.trainer.jobs import JobManager, Run
from services.trainer.journal import JobJournal
from tests.unit.trainer.fakes import FakeEngine, FakeTeacher
from tests.unit.trainer.helpers import ADAPTER, events, init_adapter, job, sample, trainer_service

SAMPLE = Sample("c", (Message("user", "hi"),), (1, 2), (3,), (-0.5,), "be brief", 1)


def _request(key: str, adapter: str = "acme/bot") -> JobRequest:
    return JobRequest(adapter, (SAMPLE,), SdpoConfig(steps=1), key)


def _journal(root: Path, owner: str, *, clock: Callable[[], float] = time.time, lease_s: float = 30.0) -> JobJournal:
    return JobJournal(LocalFolderStore(root, fsync=False), owner, lease_s=lease_s, retention_days=30, clock=clock)


async def _stuck(run: Run) -> int:
    await asyncio.Event().wait()  # runs until its trainer goes away
    return 0


async def _final(manager: JobManager, job_id: str) -> JobView:
    async for view in manager.watch(job_id):
        last = view
    return last


async def test_a_trainer_that_restarts_resumes_its_unfinished_jobs_and_runs_each_once(tmp_path: Path) -> None:
    started = asyncio.Event()

    async def crashing(run: Run) -> int:
        started.set()
        return await _stuck(run)

    first = JobManager(crashing, max_queue=10, journal=_journal(tmp_path, "trainer-0"))
    await first.start()
    running = await first.submit(_request("k-1"))
    await started.wait()
    waiting = await first.submit(_request("k-2", adapter="acme/other"))
    await first.stop()  # the process goes away: nothing more is written for either job

    runs: list[tuple[str, ...]] = []

    async def runner(run: Run) -> int:
        runs.append(run.job_ids)
        return 4

    second = JobManager(runner, max_queue=10, journal=_journal(tmp_path, "trainer-0"))
    await second.start()
    try:
        for view in (running, waiting):
            final = await _final(second, view.job_id)
            assert (final.state, final.new_version) == (JobState.SUCCEEDED, 4)
        assert sorted(runs) == sorted([(running.job_id,), (waiting.job_id,)])
        # The key still names the job: a retry of the submit returns it and trains nothing.
        assert (await second.submit(_request("k-1"))).job_id == running.job_id
        assert len(runs) == 2
        assert await second._journal.open_jobs("trainer-0") == []
    finally:
        await second.stop()


async def test_the_jobs_of_a_trainer_gone_for_good_run_once_on_the_others_and_any_of_them_answers(
    tmp_path: Path,
) -> None:
    # The takers' lease is 0.3 s: the gone trainer's last heartbeat is soon older than that.
    gone = JobManager(_stuck, max_queue=10, journal=_journal(tmp_path, "gone"))
    await gone.start()
    views = [await gone.submit(_request(f"k-{i}", adapter=f"acme/a{i}")) for i in range(4)]
    await gone.stop()

    ran: dict[str, list[str]] = {"b": [], "c": []}

    def runner(name: str):
        async def run(run: Run) -> int:
            ran[name].extend(run.job_ids)
            return 2

        return run

    takers = [
        JobManager(runner(name), max_queue=10, journal=_journal(tmp_path, name, lease_s=0.3), watch_poll_s=0.05)
        for name in ran
    ]
    for taker in takers:
        await taker.start()
    try:
        for view in views:  # followed through the first taker, whichever of the two ran the job
            final = await _final(takers[0], view.job_id)
            assert (final.state, final.new_version) == (JobState.SUCCEEDED, 2), final.error
        assert sorted(ran["b"] + ran["c"]) == sorted(v.job_id for v in views)
        journal = takers[0]._journal
        assert await journal.open_jobs("gone") == []
        record, _ = await journal.load(views[0].job_id)
        assert record.owner in ("b", "c") and record.request.samples == ()  # an ended record keeps no texts
    finally:
        for taker in takers:
            await taker.stop()


async def test_one_idempotency_key_makes_one_job_across_trainers(tmp_path: Path) -> None:
    runs: list[tuple[str, ...]] = []

    async def runner(run: Run) -> int:
        runs.append(run.job_ids)
        return 3

    managers = [JobManager(runner, max_queue=10, journal=_journal(tmp_path, f"t{i}")) for i in range(2)]
    for manager in managers:
        await manager.start()
    try:
        a, b = await asyncio.gather(*(m.submit(_request("same-feedback")) for m in managers))
        assert a.job_id == b.job_id
        owner = next(m for m in managers if a.job_id in m._jobs)
        assert (await _final(owner, a.job_id)).state is JobState.SUCCEEDED
        assert runs == [(a.job_id,)]
        other = next(m for m in managers if m is not owner)
        assert (await other.get(a.job_id)).new_version == 3  # answered from the record
    finally:
        for manager in managers:
            await manager.stop()


async def test_a_retry_after_a_failure_runs_again_under_the_same_key(tmp_path: Path) -> None:
    outcomes = iter([RuntimeError("boom"), 5])

    async def runner(run: Run) -> int:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    manager = JobManager(runner, max_queue=10, journal=_journal(tmp_path, "t0"))
    await manager.start()
    try:
        failed = await manager.submit(_request("k"))
        assert (await _final(manager, failed.job_id)).state is JobState.FAILED
        retried = await manager.submit(_request("k"))
        assert retried.job_id != failed.job_id
        assert (await _final(manager, retried.job_id)).new_version == 5
        found = await manager._journal.find("acme/bot", "k")
        assert found is not None and found[0].view.job_id == retried.job_id
    finally:
        await manager.stop()


async def test_ended_records_are_swept_after_the_retention_period_with_their_keys(tmp_path: Path) -> None:
    async def runner(run: Run) -> int:
        return 2

    manager = JobManager(runner, max_queue=10, journal=_journal(tmp_path, "t0"))
    await manager.start()
    try:
        view = await manager.submit(_request("k"))
        await _final(manager, view.job_id)
    finally:
        await manager.stop()
    assert await _journal(tmp_path, "t0").sweep() == 0  # ended today: kept
    later = _journal(tmp_path, "t0", clock=lambda: time.time() + 31 * 86400)
    assert await later.sweep() == 1
    assert await later.find("acme/bot", "k") is None
    assert not any(tmp_path.joinpath("jobs").iterdir())


async def test_concurrent_submits_cannot_pass_the_queue_bounds_while_their_records_are_written(
    tmp_path: Path,
) -> None:
    """Hole: the bounds were checked before the awaited record writes, so submits in flight together all passed."""
    manager = JobManager(_stuck, max_queue=5, max_queue_per_tenant=3, journal=_journal(tmp_path, "t0"))

    async def outcomes(requests: list[JobRequest]) -> tuple[int, list[str]]:
        results = await asyncio.gather(*(manager.submit(r) for r in requests), return_exceptions=True)
        refused = [str(r) for r in results if isinstance(r, ResourceExhausted)]
        assert len(refused) + sum(isinstance(r, JobView) for r in results) == len(requests), results
        return len(requests) - len(refused), refused

    queued, refused = await outcomes([_request(f"k-{i}", adapter=f"acme/a{i}") for i in range(20)])
    assert queued == 3 and all("its quota (CLAAS_MAX_QUEUE_PER_TENANT)" in r for r in refused)
    queued, refused = await outcomes([_request(f"k-{i}", adapter=f"t{i}/bot") for i in range(20)])
    assert queued == 2 and all("the training queue is full (5 jobs waiting)" in r for r in refused)
    assert manager.queue_depth == 5
    assert len(await manager._journal.open_jobs("t0")) == 5  # the refused left no record behind


async def test_unknown_or_malformed_job_ids_are_not_found(tmp_path: Path) -> None:
    manager = JobManager(_stuck, max_queue=10, journal=_journal(tmp_path, "t0"))
    for job_id in ("0" * 32, "../adapters/acme", "x" * 300):
        with pytest.raises(NotFound, match="not found"):
            await manager.get(job_id)


class _CommitThenHang:
    """Storage whose job commits land but never answer: the trainer dies right after its commit."""

    def __init__(self, storage: StorageClient) -> None:
        self._storage = storage
        self.landed = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._storage, name)

    async def upload_version(self, name: str, parent: int, files: dict, lineage, **options: object):
        version = await self._storage.upload_version(name, parent, files, lineage, **options)
        if lineage.job_id:  # InitAdapter's commit answers
            self.landed.set()
            await asyncio.Event().wait()
        return version


async def test_a_job_resumed_after_its_commit_landed_ends_with_that_version_untrained(
    storage: StorageClient, tmp_path: Path
) -> None:
    jobs = {"trainer_id": "trainer-0", "store_url": str(tmp_path / "jobs")}
    hanging = _CommitThenHang(storage)
    async with trainer_service(hanging, engine=FakeEngine(), teacher=FakeTeacher(), **jobs) as (stub, _, _):
        await init_adapter(stub)
        submitted = (await stub.SubmitJob(job(sample(1), key="fb-1"))).job
        await hanging.landed.wait()
    assert (await storage.get_adapter(ADAPTER)).committed_jobs == {submitted.job_id: 2}

    engine, teacher = FakeEngine(), FakeTeacher()
    async with trainer_service(storage, engine=engine, teacher=teacher, **jobs) as (stub, _, _):
        final = (await events(stub, submitted.job_id))[-1]
        assert (final.state, final.new_version) == (common_pb2.JOB_STATE_SUCCEEDED, 2), final.error
        again = (await stub.SubmitJob(job(sample(1), key="fb-1"))).job
        assert again.job_id == submitted.job_id
        fetched = (await stub.GetJob(trainer_pb2.GetJobRequest(job_id=submitted.job_id))).job
        assert fetched.new_version == 2
    assert (engine.steps, teacher.requests) == (0, [])  # nothing trained or scored again
    assert [v.version for v in await storage.list_versions(ADAPTER)] == [1, 2]
    record = json.loads((tmp_path / "jobs" / "jobs" / f"{submitted.job_id}.json").read_bytes())
    assert record["view"]["state"] == "succeeded" and record["owner"] == "trainer-0"
