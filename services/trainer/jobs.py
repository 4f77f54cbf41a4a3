"""Training jobs: a bounded queue, one worker per device, merging, idempotency, cancellation, events.

Job records live in memory (bounded): a trainer restart loses its queue and its history. Clients resubmit
through the proxy, whose submit is idempotent (the same idempotency key returns the same job while this
process knows it). Jobs of one adapter that wait together, with the same SDPO config, run as one batch;
each of them reaches the batch's terminal state and version, and lists the others in ``merged_job_ids``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog

from services.common.errors import ClaasError, NotFound, ResourceExhausted
from services.common.naming import owner_of
from services.trainer import metrics
from services.trainer.config import SdpoConfig
from services.trainer.domain import JobRequest, JobState, JobView, Sample

log = structlog.get_logger("claas.trainer.jobs")


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


class Run:
    """Jobs of one adapter that a worker runs as one batch; the runner reports progress through it."""

    def __init__(self, jobs: list[_Job], emit: Callable[[_Job, JobView], None]) -> None:
        self._jobs = jobs
        self._emit = emit
        self.cancel_requested = False
        self.adapter = jobs[0].request.adapter
        self.config: SdpoConfig = jobs[0].request.config
        self.samples: tuple[Sample, ...] = tuple(s for job in jobs for s in job.request.samples)
        self.job_ids = tuple(job.view.job_id for job in jobs)

    @property
    def job_id(self) -> str:
        """The id that names the batch (the first job's) in lineage and logs."""
        return self.job_ids[0]

    def update(self, **fields: object) -> None:
        """Move every job of the batch to a new snapshot (one event each)."""
        for job in self._jobs:
            self._emit(job, dataclasses.replace(job.view, **fields))

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
    ) -> None:
        self._runner = runner
        self._max_queue = max_queue
        self._max_per_tenant = max_queue_per_tenant or max_queue
        self._max_records = max_records
        self._max_batch_samples = max_batch_samples
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._keys: dict[tuple[str, str], str] = {}
        self._queue: deque[_Job] = deque()
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task | None = None

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def max_queue(self) -> int:
        return self._max_queue

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="trainer-worker")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    def find(self, adapter: str, idempotency_key: str) -> JobView | None:
        """The job an earlier submit with this key made, if this process still knows it and it did not fail
        or get cancelled: a retry after a failure is meant to run again."""
        job_id = self._keys.get((adapter, idempotency_key)) if idempotency_key else None
        view = self._jobs[job_id].view if job_id else None
        return None if view is None or view.state in (JobState.FAILED, JobState.CANCELLED) else view

    def submit(self, request: JobRequest) -> JobView:
        """Queue a validated job; the same idempotency key returns the same job."""
        known = self.find(request.adapter, request.idempotency_key)
        if known is not None:
            return known
        tenant = owner_of(request.adapter)
        if sum(1 for job in self._queue if owner_of(job.request.adapter) == tenant) >= self._max_per_tenant:
            # Before the global bound: one tenant's burst must leave room in the queue for the others.
            raise ResourceExhausted(
                f"tenant {tenant!r} has {self._max_per_tenant} jobs waiting, its quota "
                "(CLAAS_MAX_QUEUE_PER_TENANT); retry once one has run"
            )
        if len(self._queue) >= self._max_queue:
            raise ResourceExhausted(f"the training queue is full ({self._max_queue} jobs waiting); retry later")
        view = JobView(
            job_id=uuid.uuid4().hex, adapter=request.adapter, state=JobState.QUEUED, total_steps=request.config.steps
        )
        job = _Job(request=request, view=view, submitted=time.monotonic(), events=[view], changed=asyncio.Event())
        self._jobs[view.job_id] = job
        if request.idempotency_key:
            self._keys[(request.adapter, request.idempotency_key)] = view.job_id
        self._queue.append(job)
        self._queued_changed()
        log.info("job_queued", job_id=view.job_id, adapter=request.adapter, samples=len(request.samples))
        self._forget_old()
        return view

    def get(self, job_id: str) -> JobView:
        return self._job(job_id).view

    async def watch(self, job_id: str) -> AsyncIterator[JobView]:
        """The current snapshot, then every later one, until the job ends."""
        job = self._job(job_id)
        seen = len(job.events)
        yield job.events[-1]
        while not job.events[-1].state.terminal or seen < len(job.events):
            if seen < len(job.events):
                seen += 1
                yield job.events[seen - 1]
            else:
                await job.changed.wait()

    def cancel(self, job_id: str) -> JobView:
        """Queued: cancelled at once. Running: its batch stops at the next step boundary, head untouched.

        Cancelling one job of a merged batch cancels the batch (its jobs belong to one adapter). A batch
        that is committing can no longer be stopped; a finished job is returned as it is.
        """
        job = self._job(job_id)
        if job.view.state is JobState.QUEUED:
            self._queue.remove(job)
            self._queued_changed()
            self._finish(job, JobState.CANCELLED, error="cancelled before it started")
        elif job.run is not None and not job.view.state.terminal:
            job.run.cancel_requested = True
            log.info("job_cancel_requested", job_id=job_id, state=job.view.state.value)
        return job.view

    # -- internals --------------------------------------------------------------------------------

    def _job(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} not found (job records do not survive a trainer restart)")
        return job

    def _emit(self, job: _Job, view: JobView) -> None:
        job.view = view
        job.events.append(view)
        job.changed.set()
        job.changed = asyncio.Event()

    def _finish(self, job: _Job, state: JobState, **fields: object) -> None:
        self._emit(job, dataclasses.replace(job.view, state=state, teacher_texts={}, **fields))
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
        try:
            version = await self._runner(run)
        except JobCancelled:
            self._finish_run(run, JobState.CANCELLED, error="cancelled")
        except ClaasError as exc:
            log.warning("run_failed", job_id=run.job_id, code=exc.grpc_code.name, error=exc.message)
            self._finish_run(run, JobState.FAILED, error=f"{exc.grpc_code.name}: {exc.message}")
        except asyncio.CancelledError:
            self._finish_run(run, JobState.FAILED, error="the trainer stopped while the job ran; resubmit it")
            raise
        except Exception:
            log.exception("run_crashed", job_id=run.job_id)
            # The exception's text may hold paths, tensors or another tenant's data: it stays in the log.
            self._finish_run(run, JobState.FAILED, error=f"INTERNAL: the trainer failed on job {run.job_id}; "
                             "the operator's log has the cause. Resubmit the feedback")  # fmt: skip
        else:
            self._finish_run(run, JobState.SUCCEEDED, new_version=version)
        log.info("run_finished", job_id=run.job_id, state=self._jobs[run.job_id].view.state.value)

    def _finish_run(self, run: Run, state: JobState, **fields: object) -> None:
        for job_id in run.job_ids:
            self._finish(self._jobs[job_id], state, **fields)
