"""The trainer's gRPC surface apart from running jobs: validation, InitAdapter, start-up, Info."""

from __future__ import annotations

import grpc
import pytest
from claas.v1 import common_pb2, trainer_pb2

from services.common.domain import LoraSpec
from services.common.errors import FailedPrecondition
from tests.unit.trainer.fakes import FakeEngine, FakeTeacher
from tests.unit.trainer.helpers import ADAPTER, Trainer, init_adapter, job, mutated_sample, sample, trainer_service

S = common_pb2


BAD_JOBS = [
    ("no samples", trainer_pb2.SubmitJobRequest(adapter=ADAPTER), "a job needs at least one sample"),
    ("no response", job(mutated_sample(response_ids=[], sampled_logprobs=[])), "samples[0]: response_ids is empty"),
    (
        "logprob count",
        job(mutated_sample(sampled_logprobs=[-1.0])),
        "samples[0]: 1 sampled_logprobs for 3 response ids",
    ),
    ("empty feedback", job(mutated_sample(feedback="  ")), "samples[0]: feedback is empty"),
    (
        "long feedback",
        job(mutated_sample(feedback="x" * 2001)),
        "feedback has 2001 characters, at most 2000 allowed",
    ),
    ("no prompt", job(mutated_sample(prompt_ids=[])), "samples[0]: prompt_ids is empty"),
    ("no messages", job(mutated_sample(messages=[])), "samples[0]: messages is empty"),
    ("id outside vocab", job(mutated_sample(response_ids=[1, 2, 5000])), "token id 5000 is outside the vocabulary"),
    (
        "nan logprob",
        job(mutated_sample(sampled_logprobs=[-1.0, float("nan"), -1.0])),
        "sampled_logprobs must be finite",
    ),
    ("lr <= 0", job(sample(1), learning_rate=0.0), "learning_rate must be in (0, 1], got 0.0"),
    ("alpha > 1", job(sample(1), alpha=1.5), "alpha must be in [0, 1], got 1.5"),
    ("top_k < 1", job(sample(1), top_k=0), "top_k must be an integer in [1, 1000], got 0"),
    ("top_k over teacher", job(sample(1), top_k=200), "top_k must be at most 100 with this teacher, got 200"),
    ("steps < 1", job(sample(1), steps=0), "steps must be an integer in [1, 64], got 0"),
    ("steps too many", job(sample(1), steps=65), "steps must be an integer in [1, 64], got 65"),
    ("remote teacher", job(sample(1), teacher_mode=S.TEACHER_MODE_REMOTE), "teacher_mode must be BASE, SELF or"),
    ("no adapter name", job(sample(1), adapter=""), "adapter is empty"),
]


@pytest.mark.parametrize(("request_", "details"), [b[1:] for b in BAD_JOBS], ids=[b[0] for b in BAD_JOBS])
async def test_bad_jobs_are_invalid_arguments_and_create_nothing(
    trainer: Trainer, request_: trainer_pb2.SubmitJobRequest, details: str
) -> None:
    await init_adapter(trainer.stub)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await trainer.stub.SubmitJob(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details in caught.value.details()
    info = await trainer.stub.Info(trainer_pb2.TrainerServiceInfoRequest())
    assert info.queue_depth == 0 and trainer.engine.opened == [] and trainer.teacher.requests == []


async def test_a_job_for_an_unknown_adapter_is_not_found(trainer: Trainer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await trainer.stub.SubmitJob(job(sample(1), adapter="acme/missing"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "acme/missing" in caught.value.details()


async def test_options_the_teacher_backend_cannot_serve_are_refused_up_front(storage) -> None:
    engine, teacher = FakeEngine(), FakeTeacher(backend="vllm")
    async with trainer_service(storage, engine=engine, teacher=teacher) as (stub, _, _):
        await init_adapter(stub)
        for config, param in (
            ({"support": "student"}, "support='student'"),
            ({"contrastive": True}, "contrastive=True"),
            ({"teacher_mode": S.TEACHER_MODE_TRUST_REGION}, "teacher_mode='trust_region'"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.SubmitJob(job(sample(1), **config))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert caught.value.details() == f"{param} needs the hf teacher backend; this teacher runs 'vllm'"


async def test_init_adapter_creates_the_record_and_version_1(trainer: Trainer) -> None:
    request = trainer_pb2.InitAdapterRequest(name=ADAPTER, lora=S.LoraSpec(rank=4, alpha=8))
    response = await trainer.stub.InitAdapter(request)

    assert response.adapter.head_version == 1 and response.adapter.base_model == "fake-model"
    assert list(response.adapter.lora.target_modules) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert (response.version.version, response.version.parent_version) == (1, 0)
    assert dict(response.version.lineage.extra) == {"source": "init"}
    _, files = await trainer.storage.read_version(ADAPTER, 1)
    assert files["adapter_model.safetensors"] == b"init"


async def test_init_adapter_without_a_spec_takes_the_default_shape(trainer: Trainer) -> None:
    response = await trainer.stub.InitAdapter(trainer_pb2.InitAdapterRequest(name=ADAPTER))
    assert (response.adapter.lora.rank, response.adapter.lora.alpha) == (16, 32)


async def test_init_adapter_twice_is_already_exists_and_keeps_version_1(trainer: Trainer) -> None:
    await init_adapter(trainer.stub)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await init_adapter(trainer.stub)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert caught.value.details() == f"adapter {ADAPTER} already has version 1"
    assert len(await trainer.storage.list_versions(ADAPTER)) == 1


async def test_init_adapter_of_an_existing_record_with_another_shape_is_refused(trainer: Trainer) -> None:
    await trainer.storage.create_adapter(ADAPTER, "fake-model", LoraSpec(rank=8, alpha=16))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await trainer.stub.InitAdapter(trainer_pb2.InitAdapterRequest(name=ADAPTER, lora=S.LoraSpec(rank=4, alpha=8)))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "exists with LoRA rank 8" in caught.value.details()
    # The record's own shape is used when the request gives none.
    response = await trainer.stub.InitAdapter(trainer_pb2.InitAdapterRequest(name=ADAPTER))
    assert response.version.version == 1 and response.adapter.lora.rank == 8


@pytest.mark.parametrize(
    ("lora", "details"),
    [
        (S.LoraSpec(rank=32, alpha=64), "LoRA rank must be in [1, 16] (the serving limit), got 32"),
        (S.LoraSpec(rank=8, alpha=16, target_modules=["q_proj", "lm_head"]), "unknown LoRA target modules ['lm_head']"),
    ],
)
async def test_init_adapter_refuses_shapes_the_model_or_vllm_cannot_take(
    trainer: Trainer, lora: S.LoraSpec, details: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await trainer.stub.InitAdapter(trainer_pb2.InitAdapterRequest(name=ADAPTER, lora=lora))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details in caught.value.details()
    with pytest.raises(Exception, match="not found"):
        await trainer.storage.get_adapter(ADAPTER)


async def test_a_job_on_an_adapter_without_versions_fails_with_a_reason(trainer: Trainer) -> None:
    await trainer.storage.create_adapter(ADAPTER, "fake-model", LoraSpec(rank=8, alpha=16))
    submitted = (await trainer.stub.SubmitJob(job(sample(1)))).job
    final = [r.job async for r in trainer.stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=submitted.job_id))][-1]
    assert final.state == S.JOB_STATE_FAILED
    assert final.error == f"FAILED_PRECONDITION: adapter {ADAPTER} has no version yet; call InitAdapter first"


async def test_info_reports_model_tokenizer_device_and_limits(trainer: Trainer) -> None:
    info = await trainer.stub.Info(trainer_pb2.TrainerServiceInfoRequest())
    assert (info.model_id, info.tokenizer_fingerprint, info.device) == ("fake-model", "0123456789abcdef", "cpu")
    assert (info.queue_depth, info.max_queue, info.max_lora_rank) == (0, 64, 16)


async def test_calls_before_the_model_is_loaded_are_unavailable(storage) -> None:
    async with trainer_service(storage, engine=FakeEngine(), teacher=FakeTeacher(), ready=False) as (stub, _, _):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Info(trainer_pb2.TrainerServiceInfoRequest())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "the trainer is still loading its model"


async def test_a_teacher_with_another_tokenizer_stops_the_start(storage) -> None:
    teacher = FakeTeacher(fingerprint="ffffffffffffffff")
    async with trainer_service(storage, engine=FakeEngine(), teacher=teacher, ready=False) as (_, _, start):
        with pytest.raises(FailedPrecondition) as caught:
            await start()
    assert "tokenizer mismatch" in caught.value.message
    assert "0123456789abcdef" in caught.value.message and "ffffffffffffffff" in caught.value.message


async def test_a_job_for_an_adapter_of_another_base_model_is_refused_at_submit(trainer: Trainer) -> None:
    await trainer.storage.create_adapter(ADAPTER, "other-model", LoraSpec(rank=8, alpha=16))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await trainer.stub.SubmitJob(job(sample(1)))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == f"adapter {ADAPTER} was made for 'other-model'; this trainer serves 'fake-model'"
