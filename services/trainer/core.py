"""The trainer's logic: validation, InitAdapter, and the job pipeline (fetch, score, steps, commit, re-base).

No gRPC here. The engine, the teacher and storage come in as objects that follow the protocols below, so a
test can hand in doubles (a fake teacher, a fake engine) and the model tests the real ones.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol, TypeVar

import structlog
from claas.v1 import common_pb2, storage_pb2, teacher_pb2

from services.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from services.trainer import convert, metrics
from services.trainer.config import ConfigError, SdpoConfig
from services.trainer.domain import JobRequest, JobState, JobView, LoraShape, Sample, StepResult
from services.trainer.jobs import JobManager, Run
from services.trainer.settings import TrainerSettings

log = structlog.get_logger("claas.trainer")
T = TypeVar("T")


class Teacher(Protocol):
    """The teacher service's contract (``TeacherService`` in teacher.proto)."""

    async def score(self, request: teacher_pb2.ScoreRequest) -> teacher_pb2.ScoreResponse: ...

    async def info(self) -> teacher_pb2.TeacherServiceInfoResponse: ...


class Storage(Protocol):
    """What the trainer uses of ``services.storage.client.StorageClient``."""

    async def create_adapter(self, name: str, base_model: str, lora: common_pb2.LoraSpec) -> storage_pb2.Adapter: ...

    async def get_adapter(self, name: str) -> storage_pb2.Adapter: ...

    async def read_version(
        self, name: str, version: int, *, include_optimizer: bool = False
    ) -> tuple[storage_pb2.Version, dict[str, bytes]]: ...

    async def upload_version(
        self, name: str, parent_version: int, files: dict[str, bytes], lineage: common_pb2.Lineage
    ) -> storage_pb2.Version: ...


class Session(Protocol):
    """One job's training on the engine (``services.trainer.batching.Session``)."""

    def student_support(self, samples: Sequence[Sample], k: int) -> list[Any]: ...

    def set_targets(self, samples: Sequence[Sample], targets: Sequence[Any]) -> None: ...

    def step(self, number: int) -> StepResult: ...

    def export(self) -> dict[str, bytes]: ...

    def keep(self, key: str) -> None: ...


class Engine(Protocol):
    """The warm model (``services.trainer.engine.Engine``). Every method blocks."""

    model_id: str
    fingerprint: str
    device: str
    vocab_size: int
    max_context: int

    def resolve_lora(self, shape: LoraShape) -> LoraShape: ...

    def init_files(self, shape: LoraShape) -> dict[str, bytes]: ...

    def cached(self, key: str) -> bool: ...

    def open(self, key: str, shape: LoraShape, files: dict[str, bytes] | None, config: SdpoConfig) -> Session: ...


class TrainerCore:
    def __init__(
        self,
        engine: Engine,
        storage: Storage,
        teacher: Teacher,
        settings: TrainerSettings,
        *,
        reload_engine: Callable[[], Engine] | None = None,
    ) -> None:
        self._engine = engine
        self._reload_engine = reload_engine
        self._storage = storage
        self._teacher = teacher
        self._settings = settings
        # The model is one mutable object: every use of it (a job's step, InitAdapter) takes this lock.
        self._engine_lock = asyncio.Lock()
        self._teacher_info: teacher_pb2.TeacherServiceInfoResponse | None = None
        self.jobs = JobManager(
            self.run_batch,
            max_queue=settings.max_queue,
            max_records=settings.max_job_records,
            max_batch_samples=settings.max_batch_samples,
        )

    # -- life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Compare tokenizers with the teacher (a mismatch stops the start), then take jobs."""
        info = await self._wait_for_teacher()
        if info.tokenizer_fingerprint != self._engine.fingerprint:
            raise FailedPrecondition(
                f"tokenizer mismatch: the trainer's {self._engine.model_id} has fingerprint "
                f"{self._engine.fingerprint}, the teacher's {info.model_id} has {info.tokenizer_fingerprint}; "
                "teacher and trainer must use the same tokenizer (CLAAS_BASE_MODEL)"
            )
        self._teacher_info = info
        self.jobs.start()
        log.info("trainer_ready", model=self._engine.model_id, teacher=info.model_id, backend=info.backend)

    async def stop(self) -> None:
        await self.jobs.stop()

    async def _wait_for_teacher(self) -> teacher_pb2.TeacherServiceInfoResponse:
        deadline = time.monotonic() + self._settings.dependency_wait_s
        delay = 0.5
        while True:
            try:
                return await self._teacher.info()
            except Unavailable:
                if time.monotonic() + delay > deadline:
                    raise
                log.info("waiting_for_teacher", retry_in_s=delay)
                await asyncio.sleep(delay)  # a back-off before a retry, not a synchronisation
                delay = min(delay * 2, 10.0)

    def info(self) -> dict[str, object]:
        return {
            "model_id": self._engine.model_id,
            "tokenizer_fingerprint": self._engine.fingerprint,
            "device": self._engine.device,
            "queue_depth": self.jobs.queue_depth,
            "max_queue": self.jobs.max_queue,
            "max_lora_rank": self._settings.max_lora_rank,
        }

    # -- adapters ---------------------------------------------------------------------------------

    async def init_adapter(self, name: str, lora: LoraShape) -> tuple[storage_pb2.Adapter, storage_pb2.Version]:
        """Create the adapter record if missing and commit version 1 (B = 0: the base model's answers)."""
        if not name:
            raise InvalidArgument("adapter name is empty", param="name")
        requested = lora.rank > 0
        if not requested:
            lora = LoraShape(self._settings.default_lora_rank, self._settings.default_lora_alpha, lora.targets)
        shape = self._engine.resolve_lora(lora)
        adapter = await self._get_or_create(name, shape)
        recorded = self._adapter_shape(adapter)
        if requested and recorded != shape:
            raise FailedPrecondition(
                f"adapter {name} exists with LoRA rank {recorded.rank}, alpha {recorded.alpha}, targets "
                f"{list(recorded.targets)}; the request asks for rank {shape.rank}, alpha {shape.alpha}, "
                f"targets {list(shape.targets)}"
            )
        if adapter.head_version > 0:
            raise AlreadyExists(f"adapter {name} already has version {adapter.head_version}")
        files = await self._on_engine(self._engine.init_files, recorded)
        lineage = common_pb2.Lineage(extra={"source": "init"})
        version = await self._storage.upload_version(name, 0, files, lineage)
        log.info("adapter_initialised", adapter=name, version=version.version, rank=recorded.rank)
        return await self._storage.get_adapter(name), version

    async def _get_or_create(self, name: str, shape: LoraShape) -> storage_pb2.Adapter:
        try:
            return await self._storage.get_adapter(name)
        except NotFound:
            pass
        try:
            return await self._storage.create_adapter(name, self._engine.model_id, convert.lora_spec(shape))
        except AlreadyExists:  # created by a concurrent call between our two requests
            return await self._storage.get_adapter(name)

    def _adapter_shape(self, adapter: storage_pb2.Adapter) -> LoraShape:
        if adapter.base_model != self._engine.model_id:
            raise FailedPrecondition(
                f"adapter {adapter.name} was made for {adapter.base_model!r}; this trainer serves "
                f"{self._engine.model_id!r}"
            )
        return self._engine.resolve_lora(convert.lora_shape(adapter.lora))

    # -- jobs -------------------------------------------------------------------------------------

    async def submit(
        self, adapter: str, samples: tuple[Sample, ...], overrides: dict[str, object], idempotency_key: str = ""
    ) -> JobView:
        """Validate and queue a job; nothing is created when anything is wrong (INVALID_ARGUMENT/NOT_FOUND)."""
        if not adapter:
            raise InvalidArgument("adapter is empty", param="adapter")
        known = self.jobs.find(adapter, idempotency_key)
        if known is not None:
            return known
        config = self.config_from(overrides)
        self._check_samples(samples)
        self._adapter_shape(await self._storage.get_adapter(adapter))  # NOT_FOUND, or made for another model
        return self.jobs.submit(JobRequest(adapter, samples, config, idempotency_key))

    def config_from(self, overrides: dict[str, object]) -> SdpoConfig:
        info = self._teacher_info
        # The contrastive baseline is on unless asked otherwise, where the teacher can serve it (hf).
        contrastive = self._settings.default_contrastive and (info is None or info.backend == "hf")
        try:
            config = SdpoConfig(contrastive=contrastive).with_overrides(**overrides)
        except ConfigError as exc:
            raise InvalidArgument(str(exc), param=exc.param) from None
        if info is not None and info.max_top_k and config.top_k > info.max_top_k:
            raise InvalidArgument(
                f"top_k must be at most {info.max_top_k} with this teacher, got {config.top_k}", param="top_k"
            )
        if info is not None and info.backend != "hf":
            # Only the hf backend sees full logits: it alone gathers given ids and blends two models.
            needs = {"support": config.support == "student", "contrastive": config.contrastive}
            needs["teacher_mode"] = config.teacher_mode == "trust_region"
            for param, needed in needs.items():
                if needed:
                    raise InvalidArgument(
                        f"{param}={getattr(config, param)!r} needs the hf teacher backend; this teacher runs "
                        f"{info.backend!r}",
                        param=param,
                    )
        return config

    def _check_samples(self, samples: tuple[Sample, ...]) -> None:
        settings = self._settings
        if not samples:
            raise InvalidArgument("a job needs at least one sample", param="samples")
        if len(samples) > settings.max_samples_per_job:
            raise InvalidArgument(
                f"a job takes at most {settings.max_samples_per_job} samples, got {len(samples)}", param="samples"
            )
        max_sequence = min(settings.max_sequence_tokens, self._engine.max_context or settings.max_sequence_tokens)
        for i, sample in enumerate(samples):
            _check_sample(f"samples[{i}]", sample, settings, self._engine.vocab_size, max_sequence)

    async def run_batch(self, run: Run) -> int:
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
        head = adapter.head_version
        if head == 0:
            raise FailedPrecondition(f"adapter {run.adapter} has no version yet; call InitAdapter first")
        shape = self._adapter_shape(adapter)
        run.update(state=JobState.SCORING, base_version=head, step=0, total_steps=config.steps, metrics=())
        if self._reload_engine is not None:
            # The benchmarks' baseline: the base model loaded from disk for every job, as the anchor does.
            self._engine = await self._on_engine(self._reload_engine)
        session = await self._open(adapter, head, shape, config)
        metrics.PHASE_SECONDS.labels(phase="fetch").observe(time.perf_counter() - started)
        run.checkpoint()

        started = time.perf_counter()
        targets = await self._score(samples, config, common_pb2.AdapterRef(name=run.adapter, version=head), session)
        await self._on_engine(session.set_targets, samples, targets)
        metrics.PHASE_SECONDS.labels(phase="teacher").observe(time.perf_counter() - started)
        run.checkpoint()

        results = await self._steps(run, session)
        run.checkpoint()
        run.update(state=JobState.COMMITTING)
        started = time.perf_counter()
        files = await self._on_engine(session.export)
        lineage = convert.lineage(job_id=run.job_id, job_ids=run.job_ids, samples=samples, results=results)
        version = await self._storage.upload_version(run.adapter, head, files, lineage)
        session.keep(_version_key(adapter, version.version))
        metrics.PHASE_SECONDS.labels(phase="commit").observe(time.perf_counter() - started)
        log.info("job_committed", job_id=run.job_id, adapter=run.adapter, version=version.version, parent=head)
        return version.version

    async def _score(
        self, samples: tuple[Sample, ...], config: SdpoConfig, ref: common_pb2.AdapterRef, session: Session
    ) -> list[Any]:
        """The teacher's targets for every sample, on one support per position (the student's top-K, or the
        teacher's own). The teacher scores the neutral follow-up of the contrastive baseline on the very ids
        of the feedback's distribution, so one call serves both."""
        support = None
        if config.support == "student":
            support = await self._on_engine(session.student_support, samples, config.top_k)
        response = await self._teacher.score(convert.score_request(samples, config, ref, support))
        return convert.targets(response, samples, config.contrastive)

    async def _open(self, adapter: storage_pb2.Adapter, head: int, shape: LoraShape, config: SdpoConfig) -> Session:
        key = _version_key(adapter, head)
        files = None
        if not self._engine.cached(key):
            _, files = await self._storage.read_version(adapter.name, head, include_optimizer=True)
        return await self._on_engine(self._engine.open, key, shape, files, config)

    async def _steps(self, run: Run, session: Session) -> list[StepResult]:
        run.update(state=JobState.TRAINING)
        results: list[StepResult] = []
        started = time.perf_counter()
        for number in range(1, run.config.steps + 1):
            run.checkpoint()
            result = await self._on_engine(session.step, number)
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
        elapsed = time.perf_counter() - started
        tokens = sum(r.tokens for r in results)
        metrics.PHASE_SECONDS.labels(phase="steps").observe(elapsed)
        metrics.TOKENS.inc(tokens)
        metrics.TOKENS_PER_SECOND.set(tokens / elapsed if elapsed > 0 else 0.0)
        return results

    async def _on_engine(self, fn: Callable[..., T], *args: object) -> T:
        async with self._engine_lock:
            return await asyncio.to_thread(fn, *args)

    # -- job queries ------------------------------------------------------------------------------

    def get_job(self, job_id: str) -> JobView:
        return self.jobs.get(job_id)

    def watch_job(self, job_id: str) -> AsyncIterator[JobView]:
        return self.jobs.watch(job_id)

    def cancel_job(self, job_id: str) -> JobView:
        return self.jobs.cancel(job_id)


def _version_key(adapter: storage_pb2.Adapter, version: int) -> str:
    # The creation time tells a re-created adapter of the same name apart: its version 2 is another file.
    created = f"{adapter.created_at.seconds}.{adapter.created_at.nanos}"
    return f"{adapter.name}@{version}#{created}"


def _check_sample(where: str, sample: Sample, settings: TrainerSettings, vocab: int, max_sequence: int) -> None:
    if not sample.messages:
        raise InvalidArgument(f"{where}: messages is empty (the teacher needs the conversation)", param="messages")
    if not sample.prompt_ids:
        raise InvalidArgument(f"{where}: prompt_ids is empty", param="prompt_ids")
    if not sample.response_ids:
        raise InvalidArgument(f"{where}: response_ids is empty", param="response_ids")
    if len(sample.sampled_logprobs) != len(sample.response_ids):
        raise InvalidArgument(
            f"{where}: {len(sample.sampled_logprobs)} sampled_logprobs for {len(sample.response_ids)} response ids",
            param="sampled_logprobs",
        )
    if not all(math.isfinite(v) for v in sample.sampled_logprobs):
        raise InvalidArgument(f"{where}: sampled_logprobs must be finite", param="sampled_logprobs")
    if not sample.feedback.strip():
        raise InvalidArgument(f"{where}: feedback is empty", param="feedback")
    if len(sample.feedback) > settings.max_feedback_chars:
        raise InvalidArgument(
            f"{where}: feedback has {len(sample.feedback)} characters, at most {settings.max_feedback_chars} allowed",
            param="feedback",
        )
    if len(sample.response_ids) > settings.max_response_tokens:
        raise InvalidArgument(
            f"{where}: response has {len(sample.response_ids)} tokens, at most {settings.max_response_tokens}",
            param="response_ids",
        )
    if len(sample.prompt_ids) + len(sample.response_ids) > max_sequence:
        raise InvalidArgument(f"{where}: prompt + response exceed {max_sequence} tokens", param="prompt_ids")
    bad = next((t for t in (*sample.prompt_ids, *sample.response_ids) if not 0 <= t < vocab), None)
    if bad is not None:
        raise InvalidArgument(f"{where}: token id {bad} is outside the vocabulary [0, {vocab})", param="response_ids")
