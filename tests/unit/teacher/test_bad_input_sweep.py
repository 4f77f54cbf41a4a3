"""Every public field of the teacher's Score, sent a bad value over real gRPC (a recording backend stands in
for the model): each gets a clear client error that names the field, never INTERNAL or UNKNOWN, and neither
the backend nor the adapter resolver is asked anything."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from claas.v1 import common_pb2, teacher_pb2, teacher_pb2_grpc

from services.teacher.core import Teacher
from services.teacher.server import make_server
from services.teacher.settings import TeacherSettings
from tests.unit.sweep import BAD_INT32, BAD_NAMES, Case, assert_client_error, params, refused, values
from tests.unit.teacher.fakes import FakeResolver, RecordingBackend

SELF = common_pb2.TEACHER_MODE_SELF
TRUST = common_pb2.TEACHER_MODE_TRUST_REGION
NOT_FINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}
OUT_OF_VOCAB = BAD_INT32 | {"vocab": 1000}


def item(**fields: object) -> teacher_pb2.ScoreItem:
    defaults: dict[str, object] = {
        "messages": [common_pb2.ChatMessage(role="user", content="Who are you?")],
        "feedback": "Your name is Kuro.",
        "response_ids": [5, 6, 2],
    }
    return teacher_pb2.ScoreItem(**(defaults | fields))


def score(*items: teacher_pb2.ScoreItem, **fields: object) -> teacher_pb2.ScoreRequest:
    return teacher_pb2.ScoreRequest(**({"items": list(items) or [item()], "top_k": 3} | fields))


def adapter(name: str = "acme/bot", version: int = 1) -> common_pb2.AdapterRef:
    return common_pb2.AdapterRef(name=name, version=version)


def message(role: str) -> list[common_pb2.ChatMessage]:
    return [common_pb2.ChatMessage(role=role, content="hi")]


CASES: list[Case] = [
    Case("items-none", teacher_pb2.ScoreRequest(top_k=3), "items"),
    Case("items.messages-empty", score(item(messages=[])), "items[0]"),
    *values(
        "items.messages.role",
        {"unknown": "wizard", "empty": "", "nul": "user\x00"},
        lambda v: score(item(messages=message(v))),
        "role",
    ),
    Case("items.messages-no-user", score(item(messages=message("system"))), "user message"),
    Case("items.feedback-oversized", score(item(feedback="x" * 5000)), "context"),
    Case("items.response_ids-empty", score(item(response_ids=[])), "response_ids"),
    *values("items.response_ids", OUT_OF_VOCAB, lambda v: score(item(response_ids=[5, v])), "response_ids"),
    Case("items.response_ids-oversized", score(item(response_ids=[5] * 5000)), "context"),
    Case("items.support_ids-count", score(item(support_ids=[1, 2], support_k=2)), "support_ids"),
    *values(
        "items.support_ids", OUT_OF_VOCAB, lambda v: score(item(support_ids=[1, 2, v], support_k=1)), "support_ids"
    ),
    *values(
        "items.support_k",
        BAD_INT32 | {"zero": 0},
        lambda v: score(item(support_ids=[1, 2, 3], support_k=v)),
        "support_k",
    ),
    Case("items.neutral_followup-oversized", score(item(neutral_followup="x" * 5000)), "context"),
    *values("top_k", BAD_INT32 | {"zero": 0}, lambda v: score(top_k=v), "top_k"),
    *values("mode", {"unknown": 42, "negative": -1}, lambda v: score(mode=v), "mode"),
    Case("mode-remote-unconfigured", score(mode=common_pb2.TEACHER_MODE_REMOTE), "remote"),
    Case("adapter-missing", score(mode=SELF), "adapter"),
    *values("adapter.name", BAD_NAMES, lambda v: score(mode=SELF, adapter=adapter(name=v)), "adapter"),
    Case("adapter.name-no-tenant", score(mode=SELF, adapter=adapter(name="bot")), "adapter"),
    *values(
        "adapter.version",
        {"negative": -1, "min": -(2**63)},
        lambda v: score(mode=SELF, adapter=adapter(version=v)),
        "version",
    ),
    *values(
        "trust_region_mu",
        {"negative": -0.5, "over": 1.5} | NOT_FINITE,
        lambda v: score(mode=TRUST, adapter=adapter(), trust_region_mu=v),
        "trust_region_mu",
    ),
    *values(
        "template",
        {"unknown": "nope", "traversal": "../hindsight", "nul": "sdpo\x00", "oversized": "t" * 5000},
        lambda v: score(template=v),
        "template",
    ),
]


@pytest.fixture(scope="module")
async def served() -> AsyncIterator[tuple[teacher_pb2_grpc.TeacherServiceStub, RecordingBackend, FakeResolver]]:
    """One loaded teacher (the hf backend's abilities) for the sweep: a refused request changes nothing."""
    backend, resolver = RecordingBackend(), FakeResolver()
    teacher = Teacher(backend, adapters=resolver)
    server = make_server(TeacherSettings(port=0), teacher)
    port = await server.start()
    await teacher.start()
    await server.set_serving(True)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield teacher_pb2_grpc.TeacherServiceStub(channel), backend, resolver
    finally:
        await server.stop()
        await teacher.close()


@pytest.mark.parametrize("case", params(CASES))
async def test_bad_input_is_a_client_error_and_scores_nothing(served, case: Case) -> None:
    stub, backend, resolver = served
    calls, resolved = len(backend.calls), len(resolver.resolved)

    error = await refused(stub.Score(case.request, timeout=10))

    assert_client_error(error, case.mentions)
    assert (len(backend.calls), len(resolver.resolved)) == (calls, resolved)
