"""Wiring of the trainer role: clients of storage and teacher, the warm engine, core, gRPC server."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

import grpc
from claas.v1 import teacher_pb2, teacher_pb2_grpc, trainer_pb2, trainer_pb2_grpc

from services.common.auth import InternalTokenAuth
from services.common.client import open_channel
from services.common.errors import Unavailable, from_rpc_error
from services.common.server import ServiceServer
from services.trainer.core import Engine, Storage, Teacher, TrainerCore
from services.trainer.servicer import TrainerServicer
from services.trainer.settings import TrainerSettings

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name
_TEACHER = teacher_pb2.DESCRIPTOR.services_by_name["TeacherService"].full_name


class TeacherClient:
    """The teacher service over gRPC, as the core's ``Teacher`` protocol; errors become our error family."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float) -> None:
        self.channel = channel
        self._stub = teacher_pb2_grpc.TeacherServiceStub(channel)
        self._timeout = timeout_s

    @classmethod
    def connect(cls, target: str, *, token: str = "", timeout_s: float = 300.0) -> TeacherClient:
        # Scoring has no side effect: both methods are safe to retry when the teacher is briefly away.
        channel = open_channel(target, token=token, idempotent=[(_TEACHER, "Score"), (_TEACHER, "Info")])
        return cls(channel, timeout_s=timeout_s)

    async def score(self, request: teacher_pb2.ScoreRequest) -> teacher_pb2.ScoreResponse:
        try:
            return await self._stub.Score(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None

    async def info(self) -> teacher_pb2.TeacherServiceInfoResponse:
        try:
            return await self._stub.Info(teacher_pb2.TeacherServiceInfoRequest())
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None

    async def close(self) -> None:
        await self.channel.close()


class TrainerRuntime:
    """Holds the core once the model is loaded; calls before that are UNAVAILABLE."""

    def __init__(
        self,
        settings: TrainerSettings,
        *,
        engine: Callable[[], Engine] | None = None,
        storage: Storage | None = None,
        teacher: Teacher | None = None,
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
            from services.trainer.engine import Engine as TorchEngine

            load_engine = functools.partial(TorchEngine.load, settings)
        engine = await asyncio.to_thread(load_engine)
        storage, teacher = self._storage, self._teacher
        if storage is None:
            from services.storage.client import StorageClient

            storage = StorageClient.connect(settings.storage_addr, token=settings.internal_token)
            self._owned.append(storage)
        if teacher is None:
            teacher = TeacherClient.connect(
                settings.teacher_addr, token=settings.internal_token, timeout_s=settings.teacher_timeout_s
            )
            self._owned.append(teacher)
        reload = load_engine if settings.reload_model_per_job else None
        core = TrainerCore(engine, storage, teacher, settings, reload_engine=reload)
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
