"""The Teacher gRPC service on a real in-process server (a recording backend stands in for the model)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from claas.v1 import common_pb2, teacher_pb2, teacher_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.teacher.convert import distributions_from_proto
from services.teacher.core import Teacher
from services.teacher.server import make_server
from services.teacher.settings import TeacherSettings
from tests.unit.teacher.fakes import FakeResolver, RecordingBackend, info


@pytest.fixture
async def served():
    """(stub, health stub, teacher) of a server whose teacher is loaded only when the test says so."""
    teacher = Teacher(RecordingBackend(info(name="vllm", supports_support_ids=False)), adapters=FakeResolver())
    server = make_server(TeacherSettings(port=0), teacher)
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield teacher_pb2_grpc.TeacherServiceStub(channel), health_pb2_grpc.HealthStub(channel), teacher, server
    finally:
        await channel.close()
        await server.stop()


def item(**fields) -> teacher_pb2.ScoreItem:
    defaults = {
        "messages": [common_pb2.ChatMessage(role="user", content="Who are you?")],
        "feedback": "Your name is Kuro.",
        "response_ids": [5, 6, 2],
    }
    return teacher_pb2.ScoreItem(**{**defaults, **fields})


async def ready(teacher: Teacher, server) -> None:
    await teacher.start()
    await server.set_serving(True)


async def test_score_round_trip_and_info(served):
    stub, health, teacher, server = served
    await ready(teacher, server)
    response = await stub.Score(teacher_pb2.ScoreRequest(items=[item(), item(feedback="Be brief.")], top_k=4))
    first, second = response.results
    got = distributions_from_proto(first.teacher)
    assert got.ids.shape == (3, 4) and got.logprobs.shape == (3, 4)
    np.testing.assert_allclose(np.exp(got.logprobs).sum(1) + np.exp(got.tail_logprobs), 1.0, rtol=1e-6)
    assert not first.HasField("neutral") and not second.HasField("neutral")
    assert "Your name is Kuro." in first.teacher_prompt and first.prompt_tokens > 0
    assert "Be brief." in second.teacher_prompt

    about = await stub.Info(teacher_pb2.TeacherServiceInfoRequest())
    assert (about.backend, about.max_top_k, about.vocab_size, about.max_context) == ("vllm", 50, 1000, 400)
    assert about.tokenizer_fingerprint == "f" * 16
    check = await health.Check(health_pb2.HealthCheckRequest(service="claas.v1.TeacherService"))
    assert check.status == health_pb2.HealthCheckResponse.SERVING


async def test_contrastive_needs_a_backend_that_gathers_at_given_ids(served):
    stub, _, teacher, server = served
    await ready(teacher, server)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Score(teacher_pb2.ScoreRequest(items=[item(neutral_followup="27*4?")], top_k=4))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "use the hf backend" in caught.value.details()


async def test_not_serving_and_unavailable_until_the_model_is_loaded(served):
    stub, health, _, _ = served
    check = await health.Check(health_pb2.HealthCheckRequest(service="claas.v1.TeacherService"))
    assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Info(teacher_pb2.TeacherServiceInfoRequest())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "the teacher model is still loading"


@pytest.mark.parametrize(
    ("request_fields", "code", "details"),
    [
        ({"items": [item(messages=[])]}, grpc.StatusCode.INVALID_ARGUMENT, "items[0]: the conversation is empty"),
        (
            {"items": [item(response_ids=[1, 4000])]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "items[0].response_ids[1] = 4000 is outside the vocabulary [0, 1000)",
        ),
        (
            {"top_k": 99},
            grpc.StatusCode.INVALID_ARGUMENT,
            "top_k must be in [1, 50] (CLAAS_MAX_TOP_K of the hf backend), got 99",
        ),
        (
            {"items": [item(response_ids=[1] * 500)]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "exceeds the model's context of 400",
        ),
        ({"mode": 42}, grpc.StatusCode.INVALID_ARGUMENT, "unknown teacher mode 42"),
        (
            {"mode": common_pb2.TEACHER_MODE_SELF},
            grpc.StatusCode.INVALID_ARGUMENT,
            "self mode needs an adapter (name, version)",
        ),
        (
            {
                "mode": common_pb2.TEACHER_MODE_TRUST_REGION,
                "adapter": common_pb2.AdapterRef(name="a/b"),
                "trust_region_mu": -0.5,
            },
            grpc.StatusCode.INVALID_ARGUMENT,
            "trust_region_mu must be in [0, 1], got -0.5",
        ),
        (
            {"items": [item(support_ids=[1, 2, 3], support_k=1)]},
            grpc.StatusCode.FAILED_PRECONDITION,
            "support ids need the hf backend",
        ),
        (
            {"mode": common_pb2.TEACHER_MODE_REMOTE},
            grpc.StatusCode.FAILED_PRECONDITION,
            "remote mode needs a remote model; none is configured (CLAAS_REMOTE_MODEL)",
        ),
    ],
)
async def test_refusals_arrive_with_their_status_code_and_details(served, request_fields, code, details):
    stub, _, teacher, server = served
    await ready(teacher, server)
    request = teacher_pb2.ScoreRequest(**{"items": [item()], "top_k": 3, **request_fields})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Score(request)
    assert caught.value.code() == code
    assert details in caught.value.details()
