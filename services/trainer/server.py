"""Wiring of the trainer role: clients of storage and teacher, the warm engine, core, gRPC server."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

from claas.v1 import trainer_pb2, trainer_pb2_grpc

from services.common.auth import InternalTokenAuth
from services.common.errors import Unavailable
from services.common.objectstore import open_object_store
from services.common.server import ServiceServer
from services.teacher.client import TeacherClient
from services.trainer.core import TrainerCore
from services.trainer.journal import JobJournal
from services.trainer.roles import Scorer, TrainingModel, VersionStore
from services.trainer.servicer import TrainerServicer
from services.trainer.settings import TrainerSettings

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name


class TrainerRuntime:
    """Holds the core once the model is loaded; calls before that are UNAVAILABLE."""

    def __init__(
        self,
        settings: TrainerSettings,
        *,
        engine: Callable[[], TrainingModel] | None = None,
        storage: VersionStore | None = None,
        teacher: Scorer | None = None,
    ) -> None:
        self.settings = settings
        self._engine = engine
        self._storage = storage
        self._teacher = teacher
        self._owned: list = []
        self._core: TrainerCore | None = None

    def core(self) -> TrainerCore:
        if self._core is None:
            raise Unavailable("the trainer is still loading its model")
        return self._core

    async def ready(self) -> None:
        settings = self.settings
        load_engine = self._engine
        if load_engine is None:
            from services.trainer.engine import Engine

            load_engine = functools.partial(Engine.load, settings)
        engine = await asyncio.to_thread(load_engine)
        storage, teacher = self._storage, self._teacher
        if storage is None:
            from services.storage.client import StorageClient

            storage = StorageClient.connect(settings.storage_addr, token=settings.internal_token)
            self._owned.append(storage)
        if teacher is None:
            teacher = TeacherClient.connect(
                settings.teacher_addr, token=settings.internal_token, score_timeout_s=settings.teacher_timeout_s
            )
            self._owned.append(teacher)
        reload = load_engine if settings.reload_model_per_job else None
        journal = JobJournal(
            open_object_store(settings),
            settings.owner(),
            lease_s=settings.job_lease_s,
            retention_days=settings.job_retention_days,
        )
        core = TrainerCore(engine, storage, teacher, settings, reload_engine=reload, journal=journal)
        await core.start()
        self._core = core

    async def stop(self) -> None:
        if self._core is not None:
            await self._core.stop()
        for client in self._owned:
            await client.close()


def build_server(
    settings: TrainerSettings, **dependencies: object
) -> tuple[ServiceServer, Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """The server, its ready hook (load the model, check the teacher's tokenizer) and its stop hook.

    ``dependencies`` (engine factory, storage, teacher) replace the real ones in tests.
    """
    runtime = TrainerRuntime(settings, **dependencies)
    servicer = TrainerServicer(runtime.core)
    server = ServiceServer(
        settings,
        service_names=[SERVICE_NAME],
        register=lambda s: trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, s),
        authenticator=InternalTokenAuth(settings.internal_token),
    )
    return server, runtime.ready, runtime.stop
