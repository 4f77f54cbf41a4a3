"""A small service on the shared bootstrap, run as a process by the bootstrap tests.

It serves TeacherService.Info (answering after ``CLAAS_TEST_WORK_S`` seconds of simulated work, to have a
call in flight at SIGTERM) and Score (raising errors of the family, or a plain bug, on request).
"""

from __future__ import annotations

import asyncio
import os

import structlog
from claas.v1 import teacher_pb2, teacher_pb2_grpc

from services.common.auth import InternalTokenAuth
from services.common.errors import InvalidArgument
from services.common.logs import configure_logging
from services.common.server import ServiceServer, run_server
from services.common.settings import CommonSettings, load_settings

log = structlog.get_logger("sample")


class SampleTeacher(teacher_pb2_grpc.TeacherServiceServicer):
    async def Info(self, request, context):
        log.info("info_started")
        await asyncio.sleep(float(os.environ.get("CLAAS_TEST_WORK_S", "0")))  # simulated work, not a sync
        return teacher_pb2.TeacherServiceInfoResponse(model_id="sample", backend="none")

    async def Score(self, request, context):
        if request.top_k < 0:
            raise InvalidArgument(f"top_k must be >= 1, got {request.top_k}")
        raise RuntimeError("a bug")


def build(settings: CommonSettings) -> ServiceServer:
    return ServiceServer(
        settings,
        service_names=[teacher_pb2.DESCRIPTOR.services_by_name["TeacherService"].full_name],
        register=lambda server: teacher_pb2_grpc.add_TeacherServiceServicer_to_server(SampleTeacher(), server),
        authenticator=InternalTokenAuth(settings.internal_token),
    )


if __name__ == "__main__":
    settings = load_settings(CommonSettings)
    configure_logging(settings.log_format, settings.log_level)
    asyncio.run(run_server(build(settings)))
