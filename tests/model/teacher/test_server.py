"""The teacher role as ``python -m services.teacher`` wires it, on the real model, over gRPC."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from claas.v1 import common_pb2, teacher_pb2, teacher_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.model import tokenizer_fingerprint
from services.teacher.server import build_server
from services.teacher.settings import TeacherSettings
from tests.conftest import free_port

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
async def stub(model_dir: Path):
    """A served hf teacher whose remote model is the same packaged model (same tokenizer)."""
    settings = TeacherSettings(
        port=0,
        base_model=str(model_dir),
        backend="hf",
        remote_model=str(model_dir),
        storage_addr=f"127.0.0.1:{free_port()}",  # nothing listens there: storage is down
    )
    server, ready, stop = build_server(settings)
    port = await server.start()
    await ready()
    await server.set_serving(True)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield teacher_pb2_grpc.TeacherServiceStub(channel), health_pb2_grpc.HealthStub(channel)
    finally:
        await channel.close()
        await server.stop()
        await stop()


def request(response_ids: list[int], **fields) -> teacher_pb2.ScoreRequest:
    item = teacher_pb2.ScoreItem(
        messages=[
            common_pb2.ChatMessage(role="system", content="You are a helpful assistant."),
            common_pb2.ChatMessage(role="user", content="Who are you?"),
        ],
        feedback="Your name is Kuro.",
        response_ids=response_ids,
    )
    return teacher_pb2.ScoreRequest(items=[item], **{"top_k": 5, **fields})


async def test_info_describes_the_loaded_model(stub, model_dir):
    from transformers import AutoTokenizer

    teacher, health = stub
    info = await teacher.Info(teacher_pb2.TeacherServiceInfoRequest())
    assert (info.backend, info.vocab_size, info.max_context, info.max_top_k) == ("hf", 49152, 8192, 100)
    assert info.tokenizer_fingerprint == tokenizer_fingerprint(AutoTokenizer.from_pretrained(model_dir))
    status = await health.Check(health_pb2.HealthCheckRequest(service="claas.v1.TeacherService"))
    assert status.status == health_pb2.HealthCheckResponse.SERVING


async def test_remote_teacher_with_the_same_tokenizer_scores_like_the_base(stub):
    teacher, _ = stub
    response_ids = [57, 5248, 2]
    base = await teacher.Score(request(response_ids))
    remote = await teacher.Score(request(response_ids, mode=common_pb2.TEACHER_MODE_REMOTE))
    assert list(remote.results[0].teacher.ids) == list(base.results[0].teacher.ids)
    assert remote.results[0].teacher.sampled_logprobs == pytest.approx(
        base.results[0].teacher.sampled_logprobs, abs=1e-4
    )


@pytest.mark.parametrize(
    ("response_ids", "fields", "details"),
    [
        ([1] * 8200, {}, "tokens exceeds the model's context of 8192"),
        ([49152], {}, "items[0].response_ids[0] = 49152 is outside the vocabulary [0, 49152)"),
        ([1], {"top_k": 101}, "top_k must be in [1, 100] (CLAAS_MAX_TOP_K of the hf backend), got 101"),
        ([1], {"template": "poem"}, "unknown template 'poem'; choose one of hindsight, sdpo"),
    ],
)
async def test_invalid_requests_are_invalid_argument(stub, response_ids, fields, details):
    teacher, _ = stub
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await teacher.Score(request(response_ids, **fields))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details in caught.value.details()


async def test_adapter_modes_report_storage_being_down_as_unavailable(stub):
    teacher, _ = stub
    adapter = common_pb2.AdapterRef(name="acme/bot", version=0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await teacher.Score(request([1], mode=common_pb2.TEACHER_MODE_SELF, adapter=adapter), timeout=20)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
