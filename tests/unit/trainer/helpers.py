"""Helpers of the trainer tests: in-process storage and trainer servers, requests, event streams."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from claas.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc

from services.common.server import ServiceServer, serving
from services.storage.client import StorageClient
from services.storage.server import build_server as build_storage
from services.storage.settings import StorageSettings
from services.trainer.server import build_server
from services.trainer.settings import TrainerSettings
from tests.unit.trainer.fakes import FakeEngine, FakeTeacher

ADAPTER = "acme/bot"


@asynccontextmanager
async def storage_service(folder: Path) -> AsyncIterator[str]:
    """The real storage service on a local folder; yields its address."""
    settings = StorageSettings(port=0, store_url=str(folder), grace_period_s=1)
    async with serving(build_storage(settings)) as server:
        yield f"127.0.0.1:{server.port}"


@dataclass
class Trainer:
    stub: trainer_pb2_grpc.TrainerServiceStub
    server: ServiceServer
    storage: StorageClient
    engine: FakeEngine
    teacher: FakeTeacher


@asynccontextmanager
async def trainer_service(
    storage: object, *, engine: FakeEngine, teacher: FakeTeacher, ready: bool = True, **fields: object
) -> AsyncIterator[tuple[trainer_pb2_grpc.TrainerServiceStub, ServiceServer, object]]:
    """The trainer's real server and core in this process; ``storage`` is any object with StorageClient's calls.

    Jobs are plain (not contrastive) unless a test says so, to keep one teacher call per job.
    """
    jobs = tempfile.TemporaryDirectory(prefix="claas-jobs-")
    fields = {"default_contrastive": False, "store_url": jobs.name, "store_fsync": False, **fields}
    settings = TrainerSettings(port=0, grace_period_s=1, dependency_wait_s=0, **fields)
    server, start, stop = build_server(settings, engine=lambda: engine, storage=storage, teacher=teacher)
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        if ready:
            await start()
            await server.set_serving(True)
        yield trainer_pb2_grpc.TrainerServiceStub(channel), server, start
    finally:
        await channel.close()
        await server.stop()
        await stop()
        jobs.cleanup()


async def init_adapter(stub: trainer_pb2_grpc.TrainerServiceStub, name: str = ADAPTER) -> None:
    await stub.InitAdapter(trainer_pb2.InitAdapterRequest(name=name, lora=common_pb2.LoraSpec(rank=8, alpha=16)))


def sample(index: int = 0, *, feedback: str = "Be more concise.", length: int = 3) -> trainer_pb2.TrainSample:
    return trainer_pb2.TrainSample(
        completion_id=f"cmpl-{index}",
        messages=[
            common_pb2.ChatMessage(role="system", content="You are a helpful assistant."),
            common_pb2.ChatMessage(role="user", content=f"Question {index}?"),
        ],
        prompt_ids=[1, 2, 3, 4],
        response_ids=[10 + i for i in range(length)],
        sampled_logprobs=[-1.0] * length,
        feedback=feedback,
        served_version=1,
    )


def mutated_sample(index: int = 0, **changes: object) -> trainer_pb2.TrainSample:
    """``sample(index)`` with the named fields replaced (lists replace repeated fields)."""
    changed = sample(index)
    for name, value in changes.items():
        changed.ClearField(name)
        if isinstance(value, list):
            getattr(changed, name).extend(value)
        else:
            setattr(changed, name, value)
    return changed


def job(*samples: trainer_pb2.TrainSample, adapter: str = ADAPTER, key: str = "", **config: object):
    """A SubmitJob of ``samples``; 2 steps and no guided rollouts unless ``config`` says otherwise (the queue's
    tests count the teacher's items, which guided rollouts would add to)."""
    return trainer_pb2.SubmitJobRequest(
        adapter=adapter,
        samples=list(samples) or [sample()],
        config=common_pb2.SdpoConfig(**({"steps": 2, "guided_rollouts": 0} | config)),
        idempotency_key=key,
    )


async def events(stub: trainer_pb2_grpc.TrainerServiceStub, job_id: str) -> list[common_pb2.JobStatus]:
    """Every event of a job's stream until it ends."""
    return [r.job async for r in stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job_id))]


async def wait_for(stub: trainer_pb2_grpc.TrainerServiceStub, job_id: str, state: int) -> common_pb2.JobStatus:
    """The first event of the job in ``state`` (the stream is left at once)."""
    call = stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job_id))
    try:
        async for response in call:
            if response.job.state == state:
                return response.job
    finally:
        call.cancel()
    raise AssertionError(f"job {job_id} ended without reaching state {state}")
