"""Durable job records in the object store (DESIGN.md §11): a job outlives the trainer that took it.

```
jobs/<job_id>.json                  the record: the request (until the job ends), its state, its owner
job-keys/<sha256(adapter, key)>     which job an idempotency key made, for every trainer (global idempotency)
jobs-open/<owner>/<job_id>          an empty marker while the job is unfinished: what its owner resumes
jobs-ended/<yyyy-mm-dd>/<job_id>    an empty marker of the day it ended: what the retention sweep deletes
trainers/<owner>.json               the owner's heartbeat: an owner whose beat is older than the lease is gone
```

Every race is settled by the store's conditional writes, never by a lock of one process: a key is bound
with create-if-absent (or replace-if-unchanged, for a retry after a failure), and a job changes owner only
by a replace-if-unchanged of its record, so two trainers that both see a dead owner cannot both take a job.
A record is written before its key is bound and its key before its open marker, so a crash between the
steps leaves either nothing that runs or a job whose key says it is the one to run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import structlog

from services.common.domain import Message, StepMetrics
from services.common.errors import Aborted, AlreadyExists, NotFound
from services.common.heartbeat import Heartbeats
from services.common.objectstore import ObjectStore
from services.trainer.config import SdpoConfig
from services.trainer.domain import JobRequest, JobState, JobView, Sample

log = structlog.get_logger("claas.trainer.journal")

FORMAT = 1
JOBS = "jobs/"
KEYS = "job-keys/"
OPEN = "jobs-open/"
ENDED = "jobs-ended/"
TRAINERS = "trainers/"


@dataclasses.dataclass(frozen=True)
class JobRecord:
    """``jobs/<job_id>.json``: what a trainer needs to run the job again, and where it stands."""

    request: JobRequest
    view: JobView
    owner: str
    submitted_at: float

    def to_json(self) -> bytes:
        view = dataclasses.asdict(self.view) | {"state": self.view.state.value, "teacher_texts": {}}
        request = {
            "adapter": self.request.adapter,
            "idempotency_key": self.request.idempotency_key,
            "config": dataclasses.asdict(self.request.config),
            "samples": [dataclasses.asdict(s) for s in self.request.samples],
        }
        body = {"format": FORMAT, "owner": self.owner, "submitted_at": self.submitted_at}
        return json.dumps(body | {"request": request, "view": view}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> JobRecord:
        body = json.loads(data)
        request, view = body["request"], body["view"]
        samples = tuple(_sample(s) for s in request["samples"])
        config = SdpoConfig().with_overrides(**request["config"])
        metrics = tuple(StepMetrics(**m) for m in view.pop("metrics"))
        state = JobState(view.pop("state"))
        merged = tuple(view.pop("merged_job_ids"))
        return cls(
            request=JobRequest(request["adapter"], samples, config, request["idempotency_key"]),
            view=JobView(**view, state=state, metrics=metrics, merged_job_ids=merged),
            owner=body["owner"],
            submitted_at=body["submitted_at"],
        )


def _sample(body: dict[str, Any]) -> Sample:
    messages = tuple(Message(**m) for m in body.pop("messages"))
    ids = {name: tuple(body.pop(name)) for name in ("prompt_ids", "response_ids", "sampled_logprobs")}
    return Sample(**body, **ids, messages=messages)


def _key_of(adapter: str, idempotency_key: str) -> str:
    digest = hashlib.sha256(f"{adapter}\0{idempotency_key}".encode()).hexdigest()
    return f"{KEYS}{digest[:40]}.json"


class JobJournal:
    """The job records of every trainer on one object store, as this trainer (``owner``) writes them.

    ``lease_s``: a trainer whose heartbeat is older is gone, and its unfinished jobs are taken over.
    ``retention_days``: ended records older than this are deleted by ``sweep``.
    """

    def __init__(
        self,
        store: ObjectStore,
        owner: str,
        *,
        lease_s: float,
        retention_days: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.heartbeats = Heartbeats(store, TRAINERS, owner, lease_s=lease_s, clock=clock)
        self.owner = self.heartbeats.member
        self.lease_s = lease_s
        self._retention = timedelta(days=retention_days)
        self._clock = clock

    def now(self) -> float:
        return self._clock()

    # -- records ----------------------------------------------------------------------------------

    async def load(self, job_id: str) -> tuple[JobRecord, str]:
        """The record and its tag; NotFound when the store has none."""
        tagged = await self.store.get_tagged(f"{JOBS}{job_id}.json")
        return JobRecord.from_json(tagged.data), tagged.etag

    async def find(self, adapter: str, idempotency_key: str) -> tuple[JobRecord, str] | None:
        """The job an earlier submit with this key made, on any trainer (None when there is none)."""
        try:
            bound = json.loads(await self.store.get(_key_of(adapter, idempotency_key)))
            return await self.load(bound["job_id"])
        except NotFound:
            return None

    async def create(self, record: JobRecord) -> tuple[JobRecord, str]:
        """Write a new job and bind its idempotency key. Returns the record that holds the key with its tag:
        this one, or the job a concurrent submit with the same key made first (then this one is dropped)."""
        job_id = record.view.job_id
        etag = await self.store.put_if_absent(f"{JOBS}{job_id}.json", record.to_json())
        if record.request.idempotency_key:
            winner = await self._bind(record)
            if winner is not None:
                await self.store.delete(f"{JOBS}{job_id}.json")
                return winner
        await self.store.put(f"{OPEN}{self.owner}/{job_id}", b"")
        return record, etag

    async def _bind(self, record: JobRecord) -> tuple[JobRecord, str] | None:
        """Point the record's key at it; None when it now does, else the live job that holds the key."""
        key = _key_of(record.request.adapter, record.request.idempotency_key)
        body = json.dumps({"job_id": record.view.job_id}).encode()
        while True:
            try:
                await self.store.put_if_absent(key, body)
                return None
            except AlreadyExists:
                pass
            try:
                tagged = await self.store.get_tagged(key)
            except NotFound:
                continue  # the key was swept between the two calls: bind it anew
            bound = json.loads(tagged.data)["job_id"]
            if bound == record.view.job_id:
                return None
            try:
                holder = await self.load(bound)
            except NotFound:
                holder = None
            if holder is not None and holder[0].view.state not in (JobState.FAILED, JobState.CANCELLED):
                return holder
            try:  # the key's job failed or is gone: a retry runs again
                await self.store.put_if_match(key, body, tagged.etag)
                return None
            except Aborted:
                continue

    async def holds_key(self, record: JobRecord) -> bool:
        """Whether the record's idempotency key names it (always, for a job without a key); binds a key that
        names no job yet, so a job resumed after a crash between its two writes runs once."""
        if not record.request.idempotency_key:
            return True
        return await self._bind(record) is None

    async def save(self, record: JobRecord, etag: str) -> str:
        """Replace the record if nobody else changed it since ``etag``; its new tag, or ``Aborted``."""
        return await self.store.put_if_match(f"{JOBS}{record.view.job_id}.json", record.to_json(), etag)

    async def end(self, record: JobRecord, etag: str) -> None:
        """Write the record's terminal state (its samples dropped: the tenant's texts live in the version's
        lineage and the rollouts), mark the day it ended and close its open marker. ``Aborted`` when another
        trainer took the job over since ``etag`` (its outcome is that trainer's to write)."""
        final = dataclasses.replace(record, request=dataclasses.replace(record.request, samples=()))
        await self.save(final, etag)
        day = datetime.fromtimestamp(self.now(), UTC).date().isoformat()
        await self.store.put(f"{ENDED}{day}/{record.view.job_id}", b"")
        await self.store.delete(f"{OPEN}{record.owner}/{record.view.job_id}")

    # -- owners -----------------------------------------------------------------------------------

    async def beat(self) -> None:
        """Say this trainer is alive (its jobs are not to be taken over)."""
        await self.heartbeats.beat()

    async def gone_owners(self) -> list[str]:
        """Other trainers whose heartbeat is older than the lease."""
        return await self.heartbeats.gone()

    async def open_jobs(self, owner: str) -> list[str]:
        """The ids of the unfinished jobs ``owner`` holds, oldest first by id order of the listing."""
        prefix = f"{OPEN}{owner}/"
        return [key[len(prefix) :] for key in await self.store.list(prefix)]

    async def claim(self, job_id: str, holder: str) -> tuple[JobRecord, str] | None:
        """Take an unfinished job of ``holder`` (this trainer itself after a restart, or one that is gone).
        None when it ended, moved to another trainer or lost its key to a later job: then only the marker goes."""
        try:
            record, etag = await self.load(job_id)
        except NotFound:
            record = None
        if record is None or record.view.state.terminal or record.owner != holder:
            await self.store.delete(f"{OPEN}{holder}/{job_id}")
            return None
        if not await self.holds_key(record):
            await self.end(dataclasses.replace(record, view=_cancelled(record.view)), etag)
            return None
        if holder == self.owner:
            # Its own job after a restart: nothing to rewrite. A trainer that takes it over meanwhile changes
            # the tag, so this trainer's next write of it is refused and it lets the job go.
            return record, etag
        mine = dataclasses.replace(record, owner=self.owner)
        try:
            etag = await self.save(mine, etag)
        except Aborted:  # another trainer took it first
            return None
        await self.store.put(f"{OPEN}{self.owner}/{job_id}", b"")
        await self.store.delete(f"{OPEN}{holder}/{job_id}")
        return mine, etag

    async def forget_owner(self, owner: str) -> None:
        """Drop the heartbeat of a gone trainer that holds no job any more."""
        if not await self.open_jobs(owner):
            await self.heartbeats.forget(owner)

    # -- retention --------------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Delete the records (and their keys) of jobs that ended before the retention period; how many."""
        cutoff = datetime.fromtimestamp(self.now(), UTC).date() - self._retention
        deleted = 0
        for folder in sorted({key.split("/")[1] for key in await self.store.list(ENDED)}):
            if date.fromisoformat(folder) >= cutoff:
                continue
            for key in await self.store.list(f"{ENDED}{folder}/"):
                job_id = key.rsplit("/", 1)[1]
                try:
                    record, _ = await self.load(job_id)
                except NotFound:
                    record = None
                if record is not None and record.request.idempotency_key:
                    await self._unbind(record)
                await self.store.delete(f"{JOBS}{job_id}.json")
                deleted += 1
            await self.store.delete_prefix(f"{ENDED}{folder}/")
        if deleted:
            log.info("job_records_swept", deleted=deleted)
        return deleted

    async def _unbind(self, record: JobRecord) -> None:
        key = _key_of(record.request.adapter, record.request.idempotency_key)
        try:
            tagged = await self.store.get_tagged(key)
        except NotFound:
            return
        if json.loads(tagged.data)["job_id"] == record.view.job_id:
            await self.store.delete(key)


def _cancelled(view: JobView) -> JobView:
    return dataclasses.replace(
        view, state=JobState.CANCELLED, error="a later submit with the same idempotency key runs instead"
    )
