"""A job's way through the trainer: fetch the head, score with the teacher, open a session, step, commit;
when another writer moved the head first (``Aborted``), the whole job runs again on the new head.

No gRPC here; the model, the teacher and storage come in as the roles of ``services.trainer.roles``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections.abc import Callable
from typing import TypeVar

import structlog

from services.common.domain import MERGED_JOB_IDS, Lineage, LoraSpec, StepMetrics
from services.common.errors import Aborted, DeadlineExceeded, FailedPrecondition, Unavailable
from services.storage.domain import Adapter, Version
from services.teacher.domain import AdapterRef, ScoreItem, ScoreRequest, TeacherMode
from services.trainer import metrics, validation
from services.trainer.config import SdpoConfig
from services.trainer.domain import JobState, Sample, Targets
from services.trainer.guard import DRIFT_PROMPTS, REJECTION, GuardVerdict, judge
from services.trainer.jobs import Run
from services.trainer.roles import Scorer, TrainingModel, TrainingSession, VersionStore
from services.trainer.settings import TrainerSettings

log = structlog.get_logger("claas.trainer")
T = TypeVar("T")

_TEACHER_MODES = {"base": TeacherMode.BASE, "self": TeacherMode.SELF, "trust_region": TeacherMode.TRUST_REGION}


class ModelLock:
    """The model is one mutable object: every use of it (a job's step, InitAdapter) runs here, one at a
    time, in a worker thread. ``reload`` (the benchmarks' baseline) loads the model anew for every job."""

    def __init__(self, model: TrainingModel, *, reload: Callable[[], TrainingModel] | None = None) -> None:
        self.model = model
        self._reload = reload
        self._lock = asyncio.Lock()

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        async with self._lock:
            return await asyncio.to_thread(fn, *args)

    async def fresh(self) -> None:
        """Reload the model when configured to (the anchor's way: the base model from disk for each job)."""
        if self._reload is not None:
            self.model = await self.call(self._reload)


class JobPipeline:
    """Runs one batch of jobs (a ``jobs.Run``) to a committed version; ``JobManager`` calls ``run``."""

    def __init__(
        self, model_lock: ModelLock, storage: VersionStore, teacher: Scorer, settings: TrainerSettings
    ) -> None:
        self._model_lock = model_lock
        self._storage = storage
        self._teacher = teacher
        self._settings = settings

    async def run(self, run: Run) -> int:
        """Train and commit; when another writer moved the head first, re-run on the new head."""
        attempts = self._settings.commit_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return await self._attempt(run)
            except Aborted as exc:
                metrics.COMMIT_RETRIES.inc()
                log.info("head_moved", job_id=run.job_id, adapter=run.adapter, attempt=attempt, error=exc.message)
        raise Aborted(f"the head of {run.adapter} moved during each of {attempts} attempts; resubmit the job")

    async def _attempt(self, run: Run) -> int:
        config, samples = run.config, run.samples
        started = time.perf_counter()
        adapter = await self._storage.get_adapter(run.adapter)
        committed = {job: adapter.committed_jobs[job] for job in run.job_ids if job in adapter.committed_jobs}
        if committed:
            await self._settle(run, adapter, committed)
            if not run.job_ids:
                return max(committed.values())
        head = adapter.head_version
        if head == 0:
            raise FailedPrecondition(f"adapter {run.adapter} has no version yet; call InitAdapter first")
        validation.check_base_model(adapter, self._model_lock.model.model_id)
        spec = self._model_lock.model.resolve_lora(adapter.lora)
        model = self._model_lock.model
        texts = {s.completion_id: model.teacher_text(s, config.template) for s in run.samples}
        run.update(
            state=JobState.SCORING, base_version=head, step=0, total_steps=config.steps, metrics=(), teacher_texts=texts
        )
        await self._model_lock.fresh()
        session = await self._open(adapter, head, spec, config)
        metrics.PHASE_SECONDS.labels(phase="fetch").observe(time.perf_counter() - started)
        run.checkpoint()

        if config.guided_rollouts:
            started = time.perf_counter()
            guided = await self._model_lock.call(
                session.guided_samples, samples, guided_seed(samples, head, self._settings.seed)
            )
            samples = samples + tuple(guided)
            metrics.PHASE_SECONDS.labels(phase="guided").observe(time.perf_counter() - started)
        if config.greedy_max_tokens:
            started = time.perf_counter()
            greedy = await self._model_lock.call(session.greedy_samples, run.samples)
            samples = samples + tuple(greedy)
            metrics.PHASE_SECONDS.labels(phase="greedy").observe(time.perf_counter() - started)
        started = time.perf_counter()
        targets = await self._score(samples, config, AdapterRef(run.adapter, head), session)
        await self._model_lock.call(session.set_targets, samples, targets)
        metrics.PHASE_SECONDS.labels(phase="teacher").observe(time.perf_counter() - started)
        run.checkpoint()

        fallback = run.config.steps // 2 if self._settings.commit_guard and self._settings.guard_fallback else 0
        results, halfway = await self._steps(run, session, fallback)
        run.checkpoint()
        verdict = await self._check(session, run.samples)
        if verdict is not None and not verdict.passed and halfway is not None:
            # The whole job went too far; its halfway state may not have (a name said once, not three times).
            await self._model_lock.call(session.restore, halfway)
            log.info("guard_fallback", job_id=run.job_id, adapter=run.adapter, step=fallback, reason=verdict.reason)
            verdict = (await self._check(session, run.samples)).after_fallback(fallback, len(results), verdict)
            results = results[:fallback]
        run.checkpoint()
        run.update(state=JobState.COMMITTING)
        return await self._commit(run, adapter, session, results, verdict)

    async def _settle(self, run: Run, adapter: Adapter, committed: dict[str, int]) -> None:
        """Jobs resumed after a crash that followed their commit end with the version they made (never a
        second one); a version the guard kept off the head fails them again with its reason."""
        for number in committed.values():
            if number == adapter.head_version:
                continue
            lineage = (await self._storage.get_version(run.adapter, number)).lineage
            if lineage.extra.get("guard") == "rejected":
                raise FailedPrecondition(
                    f"{REJECTION} {number} off the head ({lineage.extra.get('guard_reason', '')}); the head stays "
                    f"at {adapter.head_version}"
                )
        log.info("jobs_already_committed", adapter=run.adapter, jobs=committed)
        run.settle(committed)

    async def _open(self, adapter: Adapter, head: int, spec: LoraSpec, config: SdpoConfig) -> TrainingSession:
        model = self._model_lock.model
        key = version_key(adapter, head)
        files = None
        if not model.cached(key):
            _, files = await self._storage.read_version(adapter.name, head, include_optimizer=True)
        return await self._model_lock.call(model.open, key, spec, files, config)

    async def _score(
        self, samples: tuple[Sample, ...], config: SdpoConfig, ref: AdapterRef, session: TrainingSession
    ) -> list[Targets]:
        """The teacher's targets for every sample, on one support per position (the student's top-K, or the
        teacher's own). The teacher scores the neutral follow-up of the contrastive baseline on the very ids
        of the feedback's distribution, so one call serves both."""
        support = None
        if config.support == "student":
            support = await self._model_lock.call(session.student_support, samples, config.top_k)
        results = await self._teacher.score(score_request(samples, config, ref, support))
        return validation.targets_from_results(results, samples, contrastive=config.contrastive)

    async def _steps(
        self, run: Run, session: TrainingSession, snapshot_at: int
    ) -> tuple[list[StepMetrics], object | None]:
        """Run the job's steps; with ``snapshot_at`` > 0 also return the session's state after that step."""
        run.update(state=JobState.TRAINING)
        results: list[StepMetrics] = []
        snapshot = None
        started = time.perf_counter()
        for number in range(1, run.config.steps + 1):
            run.checkpoint()
            result = await self._model_lock.call(session.step, number)
            if number == 1 and result.clip_fraction > 0.5:
                log.warning(
                    "rollouts_off_policy",
                    job_id=run.job_id,
                    clip_fraction=round(result.clip_fraction, 3),
                    hint="most tokens' importance weights hit is_clip: the rollouts come from an older version "
                    "or their sampled_logprobs are wrong; submit feedback soon after the completion",
                )
            results.append(result)
            run.update(step=number, metrics=tuple(results))
            if number == snapshot_at:
                snapshot = await self._model_lock.call(session.snapshot)
        elapsed = time.perf_counter() - started
        tokens = sum(r.tokens for r in results)
        metrics.PHASE_SECONDS.labels(phase="steps").observe(elapsed)
        metrics.TOKENS.inc(tokens)
        metrics.TOKENS_PER_SECOND.set(tokens / elapsed if elapsed > 0 else 0.0)
        return results, snapshot

    async def _check(self, session: TrainingSession, samples: tuple[Sample, ...]) -> GuardVerdict | None:
        """The commit guard's verdict on the trained weights (None when the guard is off)."""
        settings = self._settings
        if not settings.commit_guard:
            return None
        started = time.perf_counter()
        model = self._model_lock.model
        conversations = list(dict.fromkeys(s.prompt_ids for s in samples))[: settings.guard_conversations]
        probe = await self._model_lock.call(
            model.guard_probe, session, DRIFT_PROMPTS, conversations, settings.guard_max_new_tokens
        )
        seconds = time.perf_counter() - started
        metrics.PHASE_SECONDS.labels(phase="guard").observe(seconds)
        return judge(
            probe,
            questions=len(DRIFT_PROMPTS),
            max_drift=settings.guard_max_drift,
            max_degenerate=settings.guard_max_degenerate,
            seconds=seconds,
        )

    async def _commit(
        self,
        run: Run,
        adapter: Adapter,
        session: TrainingSession,
        results: list[StepMetrics],
        verdict: GuardVerdict | None,
    ) -> int:
        """Export the session, upload it as the head's child, and keep its state cached for the next job.

        A version the guard rejected is uploaded too, but not as the head, and the job fails."""
        started = time.perf_counter()
        head = adapter.head_version
        model = self._model_lock.model
        state, files = await self._model_lock.call(model.export, session)
        lineage = job_lineage(job_id=run.job_id, job_ids=run.job_ids, samples=run.samples, results=results)
        if run.config.guided_rollouts:
            extra = {"guided_rollouts": str(run.config.guided_rollouts * len(run.samples))}
            lineage = dataclasses.replace(lineage, extra=lineage.extra | extra)
        if run.config.greedy_max_tokens:
            extra = {"greedy_rollouts": str(len({sample.prompt_ids for sample in run.samples}))}
            lineage = dataclasses.replace(lineage, extra=lineage.extra | extra)
        if verdict is not None:
            lineage = dataclasses.replace(lineage, extra=lineage.extra | verdict.lineage_extra())
        rejected = verdict is not None and not verdict.passed
        version = await self._upload(run, adapter, files, lineage, set_head=not rejected)
        if rejected:
            metrics.GUARD_REJECTIONS.inc()
            log.warning("version_rejected", job_id=run.job_id, adapter=run.adapter, version=version.version,
                        reason=verdict.reason)  # fmt: skip
            raise FailedPrecondition(
                f"{REJECTION} {version.version} off the head ({verdict.reason}); the head stays "
                f"at {head}. Lower learning_rate or steps, or check the feedback"
            )
        # Only once committed: a version that lost the race must not be found in the cache.
        model.remember(version_key(adapter, version.version), state)
        metrics.PHASE_SECONDS.labels(phase="commit").observe(time.perf_counter() - started)
        log.info("job_committed", job_id=run.job_id, adapter=run.adapter, version=version.version, parent=head)
        return version.version

    async def _upload(
        self, run: Run, adapter: Adapter, files: dict[str, bytes], lineage: Lineage, *, set_head: bool
    ) -> Version:
        """Upload the version, again after a failure that left its fate unknown: storage remembers which job
        made which version, so a retry whose first try landed gets that version back, not a second one."""
        failures = 0
        while True:
            try:
                return await self._storage.upload_version(
                    run.adapter,
                    adapter.head_version,
                    files,
                    lineage,
                    set_head=set_head,
                    incarnation=adapter.incarnation,
                )
            except (Unavailable, DeadlineExceeded) as exc:
                failures += 1
                if failures > self._settings.upload_retries:
                    raise
                log.warning("upload_retry", job_id=run.job_id, adapter=run.adapter, failures=failures,
                            error=exc.message)  # fmt: skip
                await asyncio.sleep(_backoff(failures))


def _backoff(attempt: int) -> float:
    """Seconds before upload retry ``attempt`` (1-based): 0.5, 1, 2, ... capped at 8."""
    return min(0.5 * 2 ** (attempt - 1), 8.0)


def guided_seed(samples: tuple[Sample, ...], head: int, seed: int) -> int:
    """The seed of a job's guided rollouts: the same rollouts and feedback on the same head sample the same
    responses, so a run is reproducible as everything else on the CPU is (and a job re-run after a lost race
    is the same job). The seed reads what was said, not ids or names, which differ between two runs."""
    digest = hashlib.sha256(str(seed).encode())
    for sample in samples:
        digest.update(repr((head, sample.prompt_ids, sample.response_ids, sample.feedback)).encode())
    return int.from_bytes(digest.digest()[:4], "big")


def version_key(adapter: Adapter, version: int) -> str:
    """The model's cache key of a version."""
    # The creation time tells a re-created adapter of the same name apart: its version 2 is another file.
    return f"{adapter.name}@{version}#{adapter.created_at.isoformat()}"


def score_request(
    samples: tuple[Sample, ...], config: SdpoConfig, adapter: AdapterRef, support: list | None = None
) -> ScoreRequest:
    """The teacher's request: one item per sample, with the neutral follow-up when the config is contrastive.

    ``support``: per sample a [T, K] array of ids to score at instead of the teacher's top-K.
    """
    items = []
    for i, sample in enumerate(samples):
        ids = support[i] if support is not None else None
        items.append(
            ScoreItem(
                messages=sample.messages,
                feedback=sample.feedback,
                response_ids=sample.response_ids,
                support_ids=tuple(int(v) for v in ids.reshape(-1)) if ids is not None else (),
                support_k=int(ids.shape[1]) if ids is not None else 0,
                neutral_followup=config.neutral_followup if config.contrastive else "",
            )
        )
    mode = _TEACHER_MODES[config.teacher_mode]
    return ScoreRequest(
        items=tuple(items),
        top_k=config.top_k,
        mode=mode,
        adapter=adapter if mode is not TeacherMode.BASE else None,
        mu=config.trust_region_mu,
        template=config.template,
    )


def job_lineage(
    *, job_id: str, job_ids: tuple[str, ...], samples: tuple[Sample, ...], results: list[StepMetrics]
) -> Lineage:
    """What made the version: the job (and the jobs merged into it), its samples' ids and feedback, the steps."""
    extra = {"source": "sdpo"}
    if len(job_ids) > 1:
        extra[MERGED_JOB_IDS] = ",".join(job_ids)
    return Lineage(
        job_id=job_id,
        completion_ids=tuple(s.completion_id for s in samples),
        feedback=tuple(s.feedback for s in samples),
        metrics=tuple(results),
        extra=extra,
    )
