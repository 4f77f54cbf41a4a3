"""Wiring of the teacher role: backend, core, gRPC server; shared by ``__main__`` and tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
from claas.v1 import teacher_pb2, teacher_pb2_grpc

from services.common.auth import InternalTokenAuth
from services.common.server import ServiceServer
from services.teacher.adapters import AdapterFiles
from services.teacher.core import Teacher
from services.teacher.servicer import TeacherServicer
from services.teacher.settings import TeacherSettings

SERVICE_NAME = teacher_pb2.DESCRIPTOR.services_by_name["TeacherService"].full_name


def make_server(settings: TeacherSettings, teacher: Teacher) -> ServiceServer:
    """A server for an already built ``teacher`` (tests pass one with a fake backend)."""

    def register(server: grpc.aio.Server) -> None:
        teacher_pb2_grpc.add_TeacherServiceServicer_to_server(TeacherServicer(teacher), server)

    return ServiceServer(
        settings,
        service_names=[SERVICE_NAME],
        register=register,
        authenticator=InternalTokenAuth(settings.internal_token),
    )


def build_teacher(settings: TeacherSettings) -> tuple[Teacher, AdapterFiles]:
    """The teacher of ``settings.backend``; the model loads in ``Teacher.start``."""
    from services.storage.client import StorageClient

    adapters = AdapterFiles(lambda: StorageClient.connect(settings.storage_addr, token=settings.internal_token))
    if settings.backend == "vllm":
        from services.teacher.vllm_backend import VllmBackend

        backend = VllmBackend(settings, adapters)
    else:
        from services.teacher.hf_backend import HfBackend

        backend = HfBackend(settings, adapters)
    return Teacher(backend, adapters=adapters, default_template=settings.default_template), adapters


def build_server(
    settings: TeacherSettings,
) -> tuple[ServiceServer, Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    teacher, adapters = build_teacher(settings)

    async def stop() -> None:
        await teacher.close()
        await adapters.close()

    return make_server(settings, teacher), teacher.start, stop
