"""Feedback: completions of one adapter plus a line of text become a training job of that adapter.

With ``wait`` the answer comes once the job has ended, and by then vLLM serves the new head, so the
next chat with the adapter is answered by it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol

import structlog
from prometheus_client import Counter

from services.common.errors import ClaasError, DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from services.proxy.audit import AuditLog, AuditSample, FeedbackRecord, new_record_id
from services.proxy.loras import Preloader
from services.proxy.rollouts import Rollout, RolloutStore
from services.proxy.tenancy import owns, qualify
from services.storage.domain import Adapter
from services.storage.layout import check_name
from services.trainer.domain import JobState, JobView, Sample

log = structlog.get_logger("claas.proxy.feedback")

FEEDBACK = Counter("claas_proxy_feedback_total", "Feedback submitted, by how its job ended.", ["outcome"])
#: How often a job whose trainer went away is followed again before the caller is told (0.25 s, 0.5 s, 1 s).
FOLLOW_RETRIES = 3

#: SDPO overrides keyed by ``common.proto``'s ``SdpoConfig`` field names, values as proto JSON.
Overrides = Mapping[str, Any]


class JobRunner(Protocol):
    """Who runs training jobs (the trainer)."""

    async def submit_job(
        self, adapter: str, samples: Sequence[Sample], config: Overrides | None, idempotency_key: str
    ) -> JobView: ...

    def watch_job(self, job_id: str) -> AsyncIterator[JobView]: ...

    async def get_job(self, job_id: str) -> JobView: ...


class HeadReader(Protocol):
    """Where an adapter's current head is read (storage)."""

    async def get_adapter(self, name: str) -> Adapter: ...


class Feedback:
    """Feedback on the caller's completions, submitted as a training job of their adapter."""

    def __init__(
        self,
        *,
        rollouts: RolloutStore,
        audit: AuditLog,
        trainer: JobRunner,
        storage: HeadReader,
        serving: Preloader,
        max_feedback_chars: int,
        max_completions: int,
        wait_timeout_s: float,
    ) -> None:
        self._rollouts = rollouts
        self._audit = audit
        self._trainer = trainer
        self._storage = storage
        self._serving = serving
        self._max_chars = max_feedback_chars
        self._max_completions = max_completions
        self._wait_timeout = wait_timeout_s

    async def submit(
        self,
        tenant: str,
        completion_ids: list[str],
        feedback: str,
        config: Overrides | None = None,
        *,
        wait: bool = False,
        idempotency_key: str = "",
    ) -> JobView:
        """Submit the feedback as a job of the completions' adapter; with ``wait``, return once it ended."""
        text = self._check_text(feedback)
        ids = self._check_ids(completion_ids)
        rollouts = [await self._rollouts.get(tenant, cid) for cid in ids]
        adapter = _one_adapter(rollouts)
        samples = [_sample(r, text) for r in rollouts]
        key = job_key(tenant, idempotency_key, ids, text, config)
        now = self._audit.now()
        record = FeedbackRecord(new_record_id(now), tenant, adapter, text, tuple(map(_audited, rollouts)), now)
        # Recorded before the trainer sees it: no feedback trains without a record of it.
        await self._audit.put(record)
        try:
            job = await self._trainer.submit_job(adapter, samples, config, key)
        except ClaasError as exc:
            await self._record(dataclasses.replace(record, state=JobState.FAILED, error=exc.message))
            raise
        record = await self._record(record.observe(job, self._audit.now()))
        log.info("feedback_submitted", adapter=adapter, job_id=job.job_id, completions=len(ids))
        if not wait:
            return job
        try:
            async with asyncio.timeout(self._wait_timeout):
                job = await self._follow(job, record)
        except TimeoutError:
            raise DeadlineExceeded(
                f"job {job.job_id} still running after {self._wait_timeout:.0f}s; follow it with Watch"
            ) from None
        FEEDBACK.labels(job.state.value).inc()
        return job

    async def records(
        self, tenant: str, *, adapter: str = "", state: JobState | None = None, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[FeedbackRecord], str]:
        """A page of the caller's feedback records, newest first (of one adapter, in one state, if given; a
        page filtered by state may hold fewer). A record of an unfinished job is brought up to date first."""
        full = check_name(qualify(tenant, adapter)) if adapter else ""
        page, token = await self._audit.list(tenant, adapter=full, page_size=page_size, page_token=page_token)
        current = [await self._refresh(r) if not r.state.terminal and r.job_id else r for r in page]
        return [r for r in current if state is None or r.state is state], token

    async def _refresh(self, record: FeedbackRecord) -> FeedbackRecord:
        try:
            job = await self._trainer.get_job(record.job_id)
        except NotFound:
            job = JobView(
                record.job_id,
                record.adapter,
                JobState.FAILED,
                error="the trainers no longer know this job (its record expired); the adapter is unchanged: resubmit",
            )
        except Unavailable:
            return record  # shown as last seen
        return await self._record(record.observe(job, self._audit.now())) if job.state is not record.state else record

    async def _record(self, record: FeedbackRecord) -> FeedbackRecord:
        """Write an update of the record; the feedback goes on if the write fails (the record lags)."""
        try:
            await self._audit.put(record)
        except ClaasError as exc:
            log.warning("audit_update_failed", record=record.record_id, error=exc.message)
        return record

    async def watch(self, tenant: str, job_id: str) -> AsyncIterator[JobView]:
        """The job's states until it ends; a job of another tenant's adapter is ``NotFound``."""
        job = await self._trainer.get_job(job_id)
        if not owns(tenant, job.adapter):
            raise NotFound(f"job '{job_id}' not found", param="job_id")
        async for status in self._statuses(job):
            if status.state is JobState.SUCCEEDED:
                await self._serve_head(status.adapter)
            yield status

    async def _statuses(self, job: JobView) -> AsyncIterator[JobView]:
        """The trainer's events of a job. A trainer lost mid-job does not end it: its record is in the object
        store, and it resumes on that trainer's restart or on another trainer once the lease expires; the
        job is followed again (through any trainer) a few times, then ``Unavailable`` says so."""
        last: JobView | None = None
        failures = 0
        while True:
            try:
                async for status in self._trainer.watch_job(job.job_id):
                    if status != last:  # a stream followed again starts with a snapshot already seen
                        last, failures = status, 0
                        yield status
                return
            except Unavailable as exc:
                if last is not None and last.state.terminal:
                    return
                failures += 1
                log.warning("trainer_lost", job_id=job.job_id, error=exc.message, failures=failures)
                if failures > FOLLOW_RETRIES:
                    raise Unavailable(
                        f"no trainer answers for job {job.job_id} ({exc.message}); the job is kept and resumes "
                        "when a trainer is back: follow it again with Watch"
                    ) from None
                await asyncio.sleep(0.25 * 2 ** (failures - 1))  # a back-off before following it again

    async def _follow(self, job: JobView, record: FeedbackRecord) -> JobView:
        if not job.state.terminal:
            async for status in self._statuses(job):
                job = status
                if job.state is not record.state:
                    record = await self._record(record.observe(job, self._audit.now()))
                if job.state.terminal:
                    break
            else:
                job = await self._trainer.get_job(job.job_id)
                record = await self._record(record.observe(job, self._audit.now()))
        if job.state is JobState.SUCCEEDED:
            await self._serve_head(job.adapter)
            await self._record(record.served(self._audit.now()))
        return job

    async def _serve_head(self, adapter: str) -> None:
        """Load the adapter's head into vLLM now. The job is done either way: a failure here only means
        the next chat loads it itself."""
        try:
            head = await self._storage.get_adapter(adapter)
            await self._serving.preload(adapter, head.head_version, head.generation)
        except ClaasError as exc:
            log.warning("preload_failed", adapter=adapter, error=exc.message)

    def _check_text(self, feedback: str) -> str:
        text = feedback.strip()
        if not text:
            raise InvalidArgument("'feedback' must not be empty", param="feedback")
        if len(text) > self._max_chars:
            raise InvalidArgument(
                f"feedback is {len(text)} characters, at most {self._max_chars} allowed", param="feedback"
            )
        return text

    def _check_ids(self, completion_ids: list[str]) -> list[str]:
        ids = list(dict.fromkeys(c.strip() for c in completion_ids if c.strip()))
        if not ids:
            raise InvalidArgument("'completion_ids' must name at least one completion", param="completion_ids")
        if len(ids) > self._max_completions:
            raise InvalidArgument(
                f"{len(ids)} completions, at most {self._max_completions} per feedback", param="completion_ids"
            )
        return ids


def _one_adapter(rollouts: list[Rollout]) -> str:
    base = [r.completion_id for r in rollouts if not r.adapter]
    if base:
        raise InvalidArgument(
            f"completion '{base[0]}' was answered by the base model; feedback trains an adapter",
            param="completion_ids",
        )
    adapters = sorted({r.adapter for r in rollouts})
    if len(adapters) > 1:
        raise InvalidArgument(f"completions of one adapter only, got {', '.join(adapters)}", param="completion_ids")
    return adapters[0]


def _audited(rollout: Rollout) -> AuditSample:
    return AuditSample(rollout.completion_id, rollout.messages, rollout.text, rollout.version)


def _sample(rollout: Rollout, feedback: str) -> Sample:
    return Sample(
        completion_id=rollout.completion_id,
        messages=rollout.messages,
        prompt_ids=rollout.prompt_ids,
        response_ids=rollout.response_ids,
        sampled_logprobs=rollout.sampled_logprobs,
        feedback=feedback,
        served_version=rollout.version,
    )


def job_key(tenant: str, given: str, completion_ids: list[str], feedback: str, config: Overrides | None) -> str:
    """The trainer's idempotency key: the caller's own key, or one derived from what was asked; scoped to
    the tenant either way, so two tenants' keys never meet."""
    if given:
        parts = [tenant, "key", given]
    else:
        settings = json.dumps(dict(config), sort_keys=True) if config else ""
        parts = [tenant, "derived", *sorted(completion_ids), feedback, settings]
    return "fb-" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:40]
