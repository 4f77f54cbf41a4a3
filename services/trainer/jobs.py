"""Training jobs: a bounded queue, one worker per device, merging, idempotency, cancellation, events.

With a ``journal`` (the default wiring) every job is also a record in the object store, written before
``submit`` returns: a trainer that restarts resumes its unfinished jobs, one that is gone for good has them
taken over once its heartbeat is older than the lease, any trainer answers GetJob/WatchJob for any job, and
an idempotency key names one job across all trainers. A job resumed after its version was committed is
finished with that version, not trained again (storage remembers which jobs made which versions). Without a
journal the records live in this process only. Jobs of one adapter that wait together, with the same SDPO
config, run as one batch; each of them reaches the batch's terminal state and version, and lists the others
in ``merged_job_ids``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog

from services.common.errors import Aborted, ClaasError, FailedPrecondition, NotFound, ResourceExhausted, Unavailable
from services.common.naming import owner_of
from services.trainer import metrics
from services.trainer.config import SdpoConfig
from services.trainer.domain import JobRequest, JobState, JobView, Sample
from services.trainer.journal import JobJournal, JobRecord

log = structlog.get_logger("claas.trainer.jobs")

_JOB_ID = re.compile(r"[0-9a-f]{32}")
#: The retention sweep runs once per this many heartbeats (with a 30 s lease: about every 17 minutes).
_SWEEP_EVERY_BEATS = 100


class JobCancelled(Exception):
    """Raised at a step boundary of a run whose jobs were cancelled."""


@dataclasses.dataclass(eq=False)
class _Job:
    request: JobRequest
    view: JobView
    submitted: float
    events: list[JobView]
    changed: asyncio.Event
    run: Run | None = None
    #: Wall-clock time of the submit (the record's), and the tag of the record as this trainer last wrote it.
    submitted_at: float = 0.0
    etag: str = ""
    #: The view last written to the record (a heartbeat writes the record again only when it changed).
    saved: JobView | None = None
    #: Another trainer took the job over: this one no longer writes its record.
    lost: bool = False
    #: One write of the record at a time from this process (the heartbeat's and the job's own).
    writing: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)


class Run:
    """Jobs of one adapter that a worker runs as one batch; the runner reports progress through it."""

    def __init__(self, jobs: list[_Job], emit: Callable[[_Job, JobView], None]) -> None:
        self.all_jobs = tuple(jobs)
        self._jobs = jobs
        self._emit = emit
        self.cancel_requested = False
        self.adapter = jobs[0].request.adapter
        self.config: SdpoConfig = jobs[0].request.config
        #: Jobs found already committed (resumed after a crash that followed their commit), by job id.
        self.settled: dict[str, int] = {}
        self._collect()

    def _collect(self) -> None:
        self.samples: tuple[Sample, ...] = tuple(s for job in self._jobs for s in job.request.samples)
        self.job_ids = tuple(job.view.job_id for job in self._jobs)

    @property
    def job_id(self) -> str:
        """The id that names the batch (the first job's) in lineage and logs."""
        return self.job_ids[0]

    def update(self, **fields: object) -> None:
        """Move every job of the batch to a new snapshot (one event each)."""
        for job in self._jobs:
            self._emit(job, dataclasses.replace(job.view, **fields))

    def settle(self, committed: dict[str, int]) -> None:
        """Take jobs that already made a version out of the batch: they end with that version, untrained."""
        self.settled |= committed
        self._jobs = [job for job in self._jobs if job.view.job_id not in committed]
        self._collect()

    def checkpoint(self) -> None:
        """Stop here if the batch was cancelled (called at step boundaries, before the commit)."""
        if self.cancel_requested:
            raise JobCancelled


Runner = Callable[[Run], Awaitable[int]]


class JobManager:
    """The queue in front of one device, and every job record this process knows."""

    def __init__(
        self,
        runner: Runner,
        *,
        max_queue: int,
        max_queue_per_tenant: int = 0,
        max_records: int = 10_000,
        max_batch_samples: int = 32,
        journal: JobJournal | None = None,
        watch_poll_s: float = 1.0,
    ) -> None:
        self._runner = runner
        self._journal = journal
        self._watch_poll_s = watch_poll_s
        self._max_queue = max_queue
        self._max_per_tenant = max_queue_per_tenant or max_queue
        self._max_records = max_records
        self._max_batch_samples = max_batch_samples
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._keys: dict[tuple[str, str], str] = {}
        self._queue: deque[_Job] = deque()
        #: Submits per tenant between their quota check and their place in the queue (the record's writes).
        self._admitting: Counter[str] = Counter()
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._keeper: asyncio.Task | None = None

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def max_queue(self) -> int:
        return self._max_queue

    async def start(self) -> None:
        """Resume this trainer's unfinished jobs (with a journal), then take jobs."""
        if self._journal is not None and self._keeper is None:
            await self._journal.beat()
            await self._adopt(self._journal.owner)
            self._keeper = asyncio.create_task(self._keep(), name="trainer-journal")
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="trainer-worker")

    async def stop(self) -> None:
        for task in (self._keeper, self._worker):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._worker = self._keeper = None

    async def find(self, adapter: str, idempotency_key: str) -> JobView | None:
        """The job an earlier submit with this key made, on this trainer or (with a journal) any other, if it
        did not fail or get cancelled: a retry after a failure is meant to run again."""
        if not idempotency_key:
            return None
        job_id = self._keys.get((adapter, idempotency_key))
        view = self._jobs[job_id].view if job_id else None
        if view is None and self._journal is not None:
            found = await self._journal.find(adapter, idempotency_key)
            view = found[0].view if found else None
        return None if view is None or view.state in (JobState.FAILED, JobState.CANCELLED) else view

    async def submit(self, request: JobRequest) -> JobView:
        """Queue a validated job (with a journal: recorded before this returns); the same idempotency key
        returns the same job."""
        known = await self.find(request.adapter, request.idempotency_key)
        if known is not None:
            return known
        tenant = owner_of(request.adapter)
        waiting = sum(1 for job in self._queue if owner_of(job.request.adapter) == tenant) + self._admitting[tenant]
        if waiting >= self._max_per_tenant:
            # Before the global bound: one tenant's burst must leave room in the queue for the others.
            raise ResourceExhausted(
                f"tenant {tenant!r} has {self._max_per_tenant} jobs waiting, its quota "
                "(CLAAS_MAX_QUEUE_PER_TENANT); retry once one has run"
            )
        if len(self._queue) + sum(self._admitting.values()) >= self._max_queue:
            raise ResourceExhausted(f"the training queue is full ({self._max_queue} jobs waiting); retry later")
        view = JobView(
            job_id=uuid.uuid4().hex, adapter=request.adapter, state=JobState.QUEUED, total_steps=request.config.steps
        )
        job = _Job(request, view, time.monotonic(), [view], asyncio.Event(), submitted_at=time.time())
        if self._journal is not None:
            self._admitting[tenant] += 1
            try:
                record, job.etag = await self._journal.create(self._record(job))
            finally:
                self._admitting -= Counter({tenant: 1})  # drops the tenant at zero
            if record.view.job_id != view.job_id:  # a concurrent submit with this key, maybe on another trainer
                return record.view
            job.saved = view
        self._jobs[view.job_id] = job
        if request.idempotency_key:
            self._keys[(request.adapter, request.idempotency_key)] = view.job_id
        self._queue.append(job)
        self._queued_changed()
        log.info("job_queued", job_id=view.job_id, adapter=request.adapter, samples=len(request.samples))
        self._forget_old()
        return view

    async def get(self, job_id: str) -> JobView:
        job = self._jobs.get(job_id)
        return job.view if job is not None else (await self._stored(job_id)).view

    async def watch(self, job_id: str) -> AsyncIterator[JobView]:
        """The current snapshot, then every later one, until the job ends. A job another trainer holds is
        followed through its record, as often as ``watch_poll_s``."""
        job = self._jobs.get(job_id)
        if job is None:
            async for view in self._follow(job_id):
                yield view
            return
        seen = len(job.events)
        yield job.events[-1]
        while not job.events[-1].state.terminal or seen < len(job.events):
            if seen < len(job.events):
                seen += 1
                yield job.events[seen - 1]
            else:
                await job.changed.wait()

    async def _follow(self, job_id: str) -> AsyncIterator[JobView]:
        view = (await self._stored(job_id)).view
        yield view
        while not view.state.terminal:
            await asyncio.sleep(self._watch_poll_s)  # polling another trainer's record, not a synchronisation
            job = self._jobs.get(job_id)  # taken over by this trainer meanwhile
            latest = job.view if job is not None else (await self._stored(job_id)).view
            if latest != view:
                view = latest
                yield view

    async def _stored(self, job_id: str) -> JobRecord:
        if self._journal is None or not _JOB_ID.fullmatch(job_id):
            raise NotFound(f"job {job_id!r} not found")
        try:
            return (await self._journal.load(job_id))[0]
        except NotFound:
            raise NotFound(f"job {job_id!r} not found (finished job records are kept for a while only)") from None

    async def cancel(self, job_id: str) -> JobView:
        """Queued: cancelled at once. Running: its batch stops at the next step boundary, head untouched.

        Cancelling one job of a merged batch cancels the batch (its jobs belong to one adapter). A batch
        that is committing can no longer be stopped; a finished job is returned as it is.
        """
        job = self._jobs.get(job_id)
        if job is None:
            record = await self._stored(job_id)
            if record.view.state.terminal:
                return record.view
            raise FailedPrecondition(f"job {job_id!r} runs on trainer {record.owner!r}; cancel it there")
        if job.view.state is JobState.QUEUED:
            self._queue.remove(job)
            self._queued_changed()
            await self._finish(job, JobState.CANCELLED, error="cancelled before it started")
        elif job.run is not None and not job.view.state.terminal:
            job.run.cancel_requested = True
            log.info("job_cancel_requested", job_id=job_id, state=job.view.state.value)
        return job.view

    # -- internals --------------------------------------------------------------------------------

    def _record(self, job: _Job) -> JobRecord:
        assert self._journal is not None
        return JobRecord(job.request, job.view, self._journal.owner, job.submitted_at)

    async def _save(self, job: _Job) -> None:
        """Write the job's state to its record if it changed; a job another trainer took over is stopped."""
        if self._journal is not None and job.saved != job.view:
            await self._write(job, job.view, end=False)

    async def _end(self, job: _Job, final: JobView) -> None:
        """Write the terminal state, before anyone is told of it. If the write fails the record stays
        unfinished: after a restart the job resumes, finds its commit (storage remembers it) and ends with
        that version, untrained."""
        if self._journal is None:
            return
        try:
            await self._write(job, final, end=True)
        except Unavailable as exc:
            log.warning("job_record_not_ended", job_id=job.view.job_id, error=exc.message)

    async def _write(self, job: _Job, view: JobView, *, end: bool) -> None:
        assert self._journal is not None
        async with job.writing:
            # A save that waited here while the end was written has nothing left to say; with the tag the end
            # left behind it would read as a take-over ("job_taken_over" for a job that ended here).
            if job.lost or (job.saved is not None and job.saved.state.terminal):
                return
            record = dataclasses.replace(self._record(job), view=view)
            for _ in range(2):
                try:
                    if end:
                        await self._journal.end(record, job.etag)
                    else:
                        job.etag = await self._journal.save(record, job.etag)
                    job.saved = view
                    return
                except Aborted:
                    # Changed since this trainer wrote it: taken over, unless the change was this trainer's own
                    # write whose answer was lost (then the tag is refreshed and the write made again).
                    current, job.etag = await self._journal.load(job.view.job_id)
                    if current.owner != self._journal.owner or current.view.state.terminal:
                        break
            self._lose(job)

    def _lose(self, job: _Job) -> None:
        log.warning("job_taken_over", job_id=job.view.job_id)
        job.lost = True
        if job.run is not None:
            job.run.cancel_requested = True

    async def _adopt(self, holder: str) -> int:
        """Queue the unfinished jobs of ``holder`` (this trainer after a restart, or a gone one) that this
        trainer wins; how many."""
        assert self._journal is not None
        taken = 0
        for job_id in await self._journal.open_jobs(holder):
            if job_id in self._jobs:
                continue
            claimed = await self._journal.claim(job_id, holder)
            if claimed is None:
                continue
            record, etag = claimed
            view = dataclasses.replace(record.view, state=JobState.QUEUED, step=0, metrics=(), error="")
            job = _Job(
                record.request, view, time.monotonic(), [view], asyncio.Event(), submitted_at=record.submitted_at
            )
            job.etag, job.saved = etag, record.view
            self._jobs[job_id] = job
            if record.request.idempotency_key:
                self._keys[(record.request.adapter, record.request.idempotency_key)] = job_id
            self._queue.append(job)
            taken += 1
        if taken:
            self._queued_changed()
            log.info("jobs_adopted", holder=holder, jobs=taken)
        return taken

    async def _keep(self) -> None:
        """Heartbeat, progress of the running jobs, takeover of gone trainers' jobs and the retention sweep."""
        assert self._journal is not None
        journal = self._journal
        beats = 0
        while True:
            await asyncio.sleep(journal.lease_s / 3)  # the heartbeat's period, not a synchronisation
            try:
                await journal.beat()
                for job in [j for j in self._jobs.values() if j.run is not None and not j.view.state.terminal]:
                    await self._save(job)
                beats += 1
                if beats % 3 == 0:
                    for owner in await journal.gone_owners():
                        await self._adopt(owner)
                        await journal.forget_owner(owner)
                if beats % _SWEEP_EVERY_BEATS == 1:
                    await journal.sweep()
            except ClaasError as exc:  # the store is down for a moment: the next beat tries again
                log.warning("journal_unavailable", code=exc.grpc_code.name, error=exc.message)

    def _emit(self, job: _Job, view: JobView) -> None:
        job.view = view
        job.events.append(view)
        job.changed.set()
        job.changed = asyncio.Event()

    async def _finish(self, job: _Job, state: JobState, *, durable: bool = True, **fields: object) -> None:
        final = dataclasses.replace(job.view, state=state, teacher_texts={}, **fields)
        if durable:
            await self._end(job, final)
        self._emit(job, final)
        metrics.JOBS.labels(outcome=state.value).inc()
        # A finished record answers GetJob and idempotent retries only: the tenant's prompts and answers it
        # trained on are in the version's lineage and the rollouts, not kept here for thousands of records.
        job.request = dataclasses.replace(job.request, samples=())
        job.events[:] = [dataclasses.replace(e, teacher_texts={}) for e in job.events]
        job.run = None

    def _queued_changed(self) -> None:
        metrics.QUEUE_DEPTH.set(len(self._queue))
        if self._queue:
            self._wakeup.set()
        else:
            self._wakeup.clear()

    def _forget_old(self) -> None:
        """Drop the oldest finished records beyond the bound (queued and running ones are always kept)."""
        excess = len(self._jobs) - self._max_records
        for job_id in [j for j, job in self._jobs.items() if job.view.state.terminal][: max(excess, 0)]:
            job = self._jobs.pop(job_id)
            key = (job.request.adapter, job.request.idempotency_key)
            if self._keys.get(key) == job_id:
                del self._keys[key]

    def _take(self) -> Run:
        """The oldest job, with every later queued job of the same adapter and config that still fits."""
        first = self._queue.popleft()
        batch, size = [first], len(first.request.samples)
        for job in list(self._queue):
            same = job.request.adapter == first.request.adapter and job.request.config == first.request.config
            if same and size + len(job.request.samples) <= self._max_batch_samples:
                self._queue.remove(job)
                batch.append(job)
                size += len(job.request.samples)
        self._queued_changed()
        run = Run(batch, self._emit)
        now = time.monotonic()
        for job in batch:
            job.run = run
            metrics.PHASE_SECONDS.labels(phase="queue").observe(now - job.submitted)
            others = tuple(j for j in run.job_ids if j != job.view.job_id)
            if others:
                self._emit(job, dataclasses.replace(job.view, merged_job_ids=others))
        return run

    async def _work(self) -> None:
        while True:
            await self._wakeup.wait()
            await self._execute(self._take())

    async def _execute(self, run: Run) -> None:
        log.info("run_started", job_id=run.job_id, jobs=list(run.job_ids), adapter=run.adapter)
        for job in run.all_jobs:
            await self._save(job)
        try:
            version = await self._runner(run)
        except JobCancelled:
            await self._finish_run(run, JobState.CANCELLED, error="cancelled")
        except ClaasError as exc:
            log.warning("run_failed", job_id=run.job_id, code=exc.grpc_code.name, error=exc.message)
            await self._finish_run(run, JobState.FAILED, error=f"{exc.grpc_code.name}: {exc.message}")
        except asyncio.CancelledError:
            # With a journal the record stays unfinished: the job runs again when this trainer starts again,
            # or on another one once this one's lease has expired.
            then = "it resumes when a trainer starts again" if self._journal is not None else "resubmit it"
            await self._finish_run(
                run, JobState.FAILED, durable=False, error=f"the trainer stopped while the job ran; {then}"
            )
            raise
        except Exception:
            log.exception("run_crashed", job_id=run.job_id)
            # The exception's text may hold paths, tensors or another tenant's data: it stays in the log.
            await self._finish_run(run, JobState.FAILED, error=f"INTERNAL: the trainer failed on job {run.job_id}; "
                             "the operator's log has the cause. Resubmit the feedback")  # fmt: skip
        else:
            await self._finish_run(run, JobState.SUCCEEDED, new_version=version)
        log.info("run_finished", job_id=run.job_id, state=run.all_jobs[0].view.state.value)

    async def _finish_run(self, run: Run, state: JobState, *, durable: bool = True, **fields: object) -> None:
        for job in run.all_jobs:
            if job.view.job_id in run.settled:
                await self._finish(job, JobState.SUCCEEDED, durable=durable, new_version=run.settled[job.view.job_id])
            else:
                await self._finish(job, state, durable=durable, **fields)
