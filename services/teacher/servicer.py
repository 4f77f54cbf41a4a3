"""The gRPC edge of the teacher: convert, call the core, convert back."""

from __future__ import annotations

import grpc
from claas.v1 import teacher_pb2, teacher_pb2_grpc

from services.teacher import convert
from services.teacher.core import Teacher


class TeacherServicer(teacher_pb2_grpc.TeacherServiceServicer):
    """Score and Info over gRPC, on a ``Teacher`` core."""

    def __init__(self, teacher: Teacher) -> None:
        self._teacher = teacher

    async def Score(
        self, request: teacher_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> teacher_pb2.ScoreResponse:
        results = await self._teacher.score(convert.score_request_from_proto(request))
        return convert.score_response_to_proto(results)

    async def Info(
        self, request: teacher_pb2.TeacherServiceInfoRequest, context: grpc.aio.ServicerContext
    ) -> teacher_pb2.TeacherServiceInfoResponse:
        return convert.info_to_proto(self._teacher.info().summary())
