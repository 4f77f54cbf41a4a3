"""The trainer's core: one facade over the start-up handshake, InitAdapter, job submission and the job
queries. The checks are ``validation``'s, the job's way through the model is ``pipeline``'s, the queue is
``jobs``'. No gRPC here; the model, the teacher and storage come in as the roles of ``roles``, so a test
hands in doubles (a fake teacher, a fake model) and the model tests the real ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import structlog

from services.common.domain import Lineage, LoraSpec
from services.common.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from services.storage.domain import Adapter, Version
from services.teacher.domain import TeacherInfo
from services.trainer import validation
from services.trainer.domain import JobRequest, JobView, Sample, TrainerInfo
from services.trainer.jobs import JobManager
from services.trainer.journal import JobJournal
from services.trainer.pipeline import JobPipeline, ModelLock
from services.trainer.roles import Scorer, TrainingModel, VersionStore
from services.trainer.settings import TrainerSettings

log = structlog.get_logger("claas.trainer")


class TrainerCore:
    """The trainer behind its servicer.

    ``start`` compares tokenizers with the teacher and opens the job queue; ``init_adapter`` commits an
    adapter's version 1; ``submit`` validates a job and queues it (``pipeline.JobPipeline`` runs it);
    ``get_job``/``watch_job``/``cancel_job`` and ``info`` answer from the queue (and, with a ``journal``, from
    the job records every trainer writes to the object store). Every use of the model goes
    through one ``ModelLock``, so InitAdapter and a job's steps never overlap.
    """

    def __init__(
        self,
        engine: TrainingModel,
        storage: VersionStore,
        teacher: Scorer,
        settings: TrainerSettings,
        *,
        reload_engine: Callable[[], TrainingModel] | None = None,
        journal: JobJournal | None = None,
    ) -> None:
        self._model_lock = ModelLock(engine, reload=reload_engine)
        self._storage = storage
        self._teacher = teacher
        self._settings = settings
        self._teacher_info: TeacherInfo | None = None
        self.pipeline = JobPipeline(self._model_lock, storage, teacher, settings)
        self.jobs = JobManager(
            self.pipeline.run,
            max_queue=settings.max_queue,
            max_queue_per_tenant=settings.max_queue_per_tenant,
            max_records=settings.max_job_records,
            max_batch_samples=settings.max_batch_samples,
            journal=journal,
        )

    @property
    def _engine(self) -> TrainingModel:
        return self._model_lock.model

    # -- life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Compare tokenizers with the teacher (a mismatch stops the start), then take jobs."""
        info = await self._wait_for_teacher()
        validation.check_tokenizers(self._engine.model_id, self._engine.fingerprint, info)
        self._teacher_info = info
        await self.jobs.start()
        log.info("trainer_ready", model=self._engine.model_id, teacher=info.model_id, backend=info.backend)

    async def stop(self) -> None:
        await self.jobs.stop()

    async def _wait_for_teacher(self) -> TeacherInfo:
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

    def info(self) -> TrainerInfo:
        return TrainerInfo(
            model_id=self._engine.model_id,
            tokenizer_fingerprint=self._engine.fingerprint,
            device=self._engine.device,
            queue_depth=self.jobs.queue_depth,
            max_queue=self.jobs.max_queue,
            max_lora_rank=self._settings.max_lora_rank,
        )

    # -- adapters ---------------------------------------------------------------------------------

    async def init_adapter(self, name: str, lora: LoraSpec) -> tuple[Adapter, Version]:
        """Create the adapter record if missing and commit version 1 (B = 0: the base model's answers)."""
        if not name:
            raise InvalidArgument("adapter name is empty", param="name")
        settings = self._settings
        defaults = LoraSpec(rank=settings.default_lora_rank, alpha=settings.default_lora_alpha)
        spec = self._engine.resolve_lora(lora, defaults)
        adapter = await self._get_or_create(name, spec)
        validation.check_base_model(adapter, self._engine.model_id)
        recorded = self._engine.resolve_lora(adapter.lora)
        if lora.rank > 0:  # a request that names a shape must name the adapter's
            validation.check_same_lora(name, recorded, spec)
        if adapter.head_version > 0:
            raise AlreadyExists(f"adapter {name} already has version {adapter.head_version}")
        files = await self._model_lock.call(self._engine.init_files, recorded)
        version = await self._storage.upload_version(name, 0, files, Lineage(extra={"source": "init"}))
        log.info("adapter_initialised", adapter=name, version=version.version, rank=recorded.rank)
        return await self._storage.get_adapter(name), version

    async def _get_or_create(self, name: str, spec: LoraSpec) -> Adapter:
        try:
            return await self._storage.get_adapter(name)
        except NotFound:
            pass
        try:
            return await self._storage.create_adapter(name, self._engine.model_id, spec)
        except AlreadyExists:  # created by a concurrent call between our two requests
            return await self._storage.get_adapter(name)

    # -- jobs -------------------------------------------------------------------------------------

    async def submit(
        self, adapter: str, samples: tuple[Sample, ...], overrides: dict[str, object], idempotency_key: str = ""
    ) -> JobView:
        """Validate and queue a job; nothing is created when anything is wrong (INVALID_ARGUMENT/NOT_FOUND)."""
        if not adapter:
            raise InvalidArgument("adapter is empty", param="adapter")
        validation.check_idempotency_key(idempotency_key)
        known = await self.jobs.find(adapter, idempotency_key)
        if known is not None:
            return known
        config = validation.job_config(
            overrides, default_contrastive=self._settings.default_contrastive, teacher=self._teacher_info
        )
        engine = self._engine
        validation.check_samples(samples, self._settings, vocab_size=engine.vocab_size, max_context=engine.max_context)
        record = await self._storage.get_adapter(adapter)  # NOT_FOUND
        validation.check_base_model(record, engine.model_id)
        engine.resolve_lora(record.lora)
        return await self.jobs.submit(JobRequest(adapter, samples, config, idempotency_key))

    async def get_job(self, job_id: str) -> JobView:
        return await self.jobs.get(job_id)

    def watch_job(self, job_id: str) -> AsyncIterator[JobView]:
        return self.jobs.watch(job_id)

    async def cancel_job(self, job_id: str) -> JobView:
        return await self.jobs.cancel(job_id)
