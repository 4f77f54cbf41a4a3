"""The trainers' job records on both object-store backends: the races between trainers are settled by the
store's conditional writes alone (one binding per idempotency key, one taker per job of a gone trainer)."""

from __future__ import annotations

import asyncio
import time

from services.common.domain import Message
from services.common.objectstore import ObjectStore
from services.trainer.config import SdpoConfig
from services.trainer.domain import JobRequest, JobState, JobView, Sample
from services.trainer.journal import JobJournal, JobRecord

SAMPLE = Sample("c", (Message("user", "hi"),), (1,), (2,), (-1.0,), "be brief")


def _record(job_id: str, owner: str, key: str) -> JobRecord:
    request = JobRequest("acme/bot", (SAMPLE,), SdpoConfig(steps=1), key)
    return JobRecord(request, JobView(job_id, "acme/bot", JobState.QUEUED), owner, 0.0)


async def test_twenty_concurrent_submits_of_one_key_bind_one_job(store: ObjectStore) -> None:
    journals = [JobJournal(store, f"t{i}", lease_s=30, retention_days=30) for i in range(20)]
    results = await asyncio.gather(
        *(j.create(_record(f"{i:032x}", j.owner, "same-key")) for i, j in enumerate(journals))
    )
    winners = {record.view.job_id for record, _ in results}
    assert len(winners) == 1
    (winner,) = winners
    assert (await journals[0].find("acme/bot", "same-key"))[0].view.job_id == winner
    open_jobs = [job for j in journals for job in await j.open_jobs(j.owner)]
    assert open_jobs == [winner]  # the losers' records and markers are gone


async def test_two_trainers_racing_for_a_gone_trainers_jobs_take_each_once(store: ObjectStore) -> None:
    gone = JobJournal(store, "gone", lease_s=30, retention_days=30)
    await gone.beat()
    ids = [f"{i:032x}" for i in range(8)]
    for job_id in ids:
        await gone.create(_record(job_id, "gone", f"k-{job_id}"))
    takers = [JobJournal(store, name, lease_s=30, retention_days=30) for name in ("b", "c")]
    assert [await t.gone_owners() for t in takers] == [[], []]  # its heartbeat is fresh
    # 31 s later by the takers' clocks, as the store's listing dates the heartbeat.
    takers = [
        JobJournal(store, name, lease_s=30, retention_days=30, clock=lambda: time.time() + 31) for name in ("b", "c")
    ]
    assert [await t.gone_owners() for t in takers] == [["gone"], ["gone"]]

    async def take(taker: JobJournal) -> list[str]:
        claimed = await asyncio.gather(*(taker.claim(job_id, "gone") for job_id in ids))
        return [c[0].view.job_id for c in claimed if c is not None]

    b, c = await asyncio.gather(*(take(t) for t in takers))
    assert sorted(b + c) == ids and not set(b) & set(c)
    assert await gone.open_jobs("gone") == []
    assert sorted(await takers[0].open_jobs("b") + await takers[1].open_jobs("c")) == ids
    for job_id in b:
        assert (await takers[0].load(job_id))[0].owner == "b"
