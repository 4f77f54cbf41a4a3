"""How other services call the teacher: one method per RPC, the teacher's domain types in and out.

Create one ``TeacherClient`` per process (``TeacherClient.connect``) and reuse it; every failed call raises
the ``services.common.errors`` class of its status code.
"""

from __future__ import annotations

from claas.v1 import teacher_pb2, teacher_pb2_grpc

from services.common.client import ServiceClient
from services.teacher import convert
from services.teacher.domain import ScoreRequest, ScoreResult, TeacherInfo

#: Scoring a large batch on a CPU teacher takes a while; the default deadline would cut it off.
SCORE_TIMEOUT_S = 600.0


class TeacherClient(ServiceClient):
    """The teacher as its callers see it: score responses under a hindsight prompt, describe the model."""

    SERVICE = "claas.v1.TeacherService"
    #: Scoring changes nothing: safe to retry on UNAVAILABLE, like Info.
    IDEMPOTENT = ("Score", "Info")

    def __init__(self, channel, *, score_timeout_s: float = SCORE_TIMEOUT_S) -> None:
        super().__init__(channel)
        self._stub = teacher_pb2_grpc.TeacherServiceStub(channel)
        self._score_timeout = score_timeout_s

    async def score(self, request: ScoreRequest) -> list[ScoreResult]:
        """One result per item of ``request``, in order."""
        proto = convert.score_request_to_proto(request)
        response = await self._unary(self._stub.Score, proto, timeout=self._score_timeout)
        return convert.score_response_from_proto(response)

    async def info(self) -> TeacherInfo:
        return convert.info_from_proto(await self._unary(self._stub.Info, teacher_pb2.TeacherServiceInfoRequest()))
