"""JobManager on its own: bounded records, crash handling, the stream of a finished job."""

from __future__ import annotations

import asyncio

import pytest

from services.common.domain import Message
from services.common.errors import NotFound
from services.trainer.config import SdpoConfig
from services.trainer.domain import JobRequest, JobState, Sample
from services.trainer.jobs import JobManager, Run

SAMPLE = Sample("c", (Message("user", "hi"),), (1,), (2,), (-1.0,), "be brief")


def _request(key: str = "") -> JobRequest:
    return JobRequest("acme/bot", (SAMPLE,), SdpoConfig(steps=1), key)


async def _finished(manager: JobManager, job_id: str) -> list[JobState]:
    return [view.state async for view in manager.watch(job_id)]


async def test_finished_records_beyond_the_bound_are_forgotten_with_their_keys() -> None:
    async def runner(run: Run) -> int:
        return 7

    manager = JobManager(runner, max_queue=10, max_records=2)
    await manager.start()
    try:
        first = await manager.submit(_request("k-0"))
        await _finished(manager, first.job_id)
        later = [await manager.submit(_request(f"k-{i}")) for i in (1, 2)]
        for view in later:
            await _finished(manager, view.job_id)
        await manager.submit(_request("k-3"))

        with pytest.raises(NotFound, match="not found"):
            await manager.get(first.job_id)
        assert await manager.find("acme/bot", "k-0") is None
        assert (await manager.get(later[1].job_id)).new_version == 7
    finally:
        await manager.stop()


async def test_a_crashing_runner_fails_the_job_with_the_reason_and_the_worker_goes_on() -> None:
    calls = 0

    async def runner(run: Run) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return 3

    manager = JobManager(runner, max_queue=10)
    await manager.start()
    try:
        crashed, fine = await manager.submit(_request()), await manager.submit(_request())
        assert (await _finished(manager, crashed.job_id))[-1] is JobState.FAILED
        error = (await manager.get(crashed.job_id)).error
        assert error == (
            f"INTERNAL: the trainer failed on job {crashed.job_id}; the operator's log has the cause. "
            "Resubmit the feedback"
        )
        assert "boom" not in error  # the exception's text stays in the log
        # The second job was merged into the first (same adapter and config, waiting together).
        assert (await manager.get(fine.job_id)).state is JobState.FAILED
        again = await manager.submit(_request())
        await _finished(manager, again.job_id)
        assert (await manager.get(again.job_id)).new_version == 3
    finally:
        await manager.stop()


async def test_watching_a_finished_job_yields_its_final_state_once() -> None:
    async def runner(run: Run) -> int:
        return 2

    manager = JobManager(runner, max_queue=10)
    await manager.start()
    try:
        view = await manager.submit(_request())
        await _finished(manager, view.job_id)
        assert await _finished(manager, view.job_id) == [JobState.SUCCEEDED]
    finally:
        await manager.stop()


async def test_stopping_the_worker_fails_the_running_job_and_says_to_resubmit() -> None:
    started = asyncio.Event()

    async def runner(run: Run) -> int:
        started.set()
        await asyncio.Event().wait()  # runs until the worker is cancelled
        return 0

    manager = JobManager(runner, max_queue=10)
    await manager.start()
    view = await manager.submit(_request())
    await started.wait()
    await manager.stop()

    final = await manager.get(view.job_id)
    assert final.state is JobState.FAILED and "resubmit" in final.error


async def test_finished_records_keep_no_samples() -> None:
    """Hole: finished jobs kept the tenant's prompts and answers for up to 10,000 records."""
    runs: list[Run] = []

    async def runner(run: Run) -> int:
        runs.append(run)
        return 2

    manager = JobManager(runner, max_queue=10)
    await manager.start()
    try:
        view = await manager.submit(_request("k"))
        await _finished(manager, view.job_id)
        record = manager._jobs[view.job_id]
        assert record.request.samples == () and record.run is None
        assert runs[0].samples == (SAMPLE,)  # the run itself had them
        assert await manager.find("acme/bot", "k") == await manager.get(view.job_id)  # still answers a retry
    finally:
        await manager.stop()
