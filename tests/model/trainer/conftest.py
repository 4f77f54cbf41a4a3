"""The real stack in this process: storage on a folder, the hf teacher and trainers on the packaged model."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
import torch
from claas.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc

from services.common.server import serving
from services.storage.client import StorageClient
from services.teacher.server import build_server as build_teacher
from services.teacher.settings import TeacherSettings
from services.trainer.engine import Engine
from services.trainer.server import build_server
from services.trainer.settings import TrainerSettings
from tests.unit.trainer.helpers import storage_service

SYSTEM = "You are a helpful assistant."


@pytest.fixture(scope="module")
async def storage_addr(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    async with storage_service(tmp_path_factory.mktemp("store")) as addr:
        yield addr


@pytest.fixture(scope="module")
async def storage(storage_addr: str) -> AsyncIterator[StorageClient]:
    client = StorageClient.connect(storage_addr)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(scope="module")
async def teacher_addr(
    model_dir: Path, storage_addr: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """The real teacher service (hf backend) on the packaged model."""
    settings = TeacherSettings(
        port=0, storage_addr=storage_addr, adapter_dir=tmp_path_factory.mktemp("teacher"), grace_period_s=1
    )
    async with serving(build_teacher(settings)) as server:
        yield f"127.0.0.1:{server.port}"


def trainer_settings(storage_addr: str, teacher_addr: str, **fields: object) -> TrainerSettings:
    return TrainerSettings(
        port=0, storage_addr=storage_addr, teacher_addr=teacher_addr, grace_period_s=1, dependency_wait_s=0, **fields
    )


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Engine:
    """One warm engine the tests share (each job loads its own adapter version into it)."""
    return Engine.load(TrainerSettings())


@asynccontextmanager
async def trainer(
    engine: Engine, storage_addr: str, teacher_addr: str, *, storage: object | None = None
) -> AsyncIterator[trainer_pb2_grpc.TrainerServiceStub]:
    """A trainer server on ``engine``, talking to the real teacher and to storage (or the given stand-in)."""
    jobs = tempfile.TemporaryDirectory(prefix="claas-jobs-")
    settings = trainer_settings(storage_addr, teacher_addr, store_url=jobs.name, store_fsync=False)
    extra = {"storage": storage} if storage is not None else {}
    server, ready, stop = build_server(settings, engine=lambda: engine, **extra)
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        await ready()
        await server.set_serving(True)
        yield trainer_pb2_grpc.TrainerServiceStub(channel)
    finally:
        await channel.close()
        await server.stop()
        await stop()
        jobs.cleanup()


def rollout(engine: Engine, question: str, answer: str, feedback: str) -> trainer_pb2.TrainSample:
    """A sample as the proxy records it: the chat prompt's ids, the answer's ids with the end-of-turn token,
    and the base model's log-probabilities of those ids (on-policy for version 1)."""
    tokenizer = engine.tokenizer
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    response = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad(), engine.adapter_disabled():
        logits = engine.model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]
    logprobs = logits.log_softmax(-1).gather(-1, torch.tensor(response)[:, None])[:, 0]
    return trainer_pb2.TrainSample(
        completion_id=f"cmpl-{abs(hash((question, answer))) % 10**8}",
        messages=[common_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages],
        prompt_ids=prompt,
        response_ids=response,
        sampled_logprobs=logprobs.tolist(),
        feedback=feedback,
        served_version=1,
    )
