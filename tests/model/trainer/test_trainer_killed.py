"""A trainer process SIGKILLed in the middle of a job, and started again under its name: the job resumes
from its record in the object store and ends with one version, trained once, on the real model."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from claas.v1 import trainer_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.domain import LoraSpec
from services.common.net import free_port
from services.storage.client import StorageClient
from services.trainer.client import TrainerClient
from services.trainer.convert import samples_from_proto
from services.trainer.domain import JobState, Sample
from services.trainer.engine import Engine
from tests.model.trainer.conftest import rollout

REPO = Path(__file__).resolve().parents[3]
ADAPTER = "acme/killed"
#: Seconds a trainer process may take to load the model and serve, or to die once killed.
PROCESS_TIMEOUT_S = 180.0


@contextmanager
def _trainer_process(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.trainer"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(PROCESS_TIMEOUT_S)


async def test_a_trainer_killed_mid_job_resumes_it_after_its_restart_and_commits_once(
    engine: Engine, model_dir: Path, storage_addr: str, teacher_addr: str, storage: StorageClient, tmp_path: Path
) -> None:
    port = free_port()
    env = dict(os.environ) | {
        "CLAAS_PORT": str(port),
        "CLAAS_BASE_MODEL": str(model_dir),
        "CLAAS_STORAGE_ADDR": storage_addr,
        "CLAAS_TEACHER_ADDR": teacher_addr,
        "CLAAS_STORE_URL": str(tmp_path / "jobs"),
        "CLAAS_TRAINER_ID": "trainer-0",
        "CLAAS_LOG_LEVEL": "warning",
        "CLAAS_TORCH_THREADS": "1",
    }
    sample = rollout(engine, "What is your name?", "I am an assistant.", "Your name is Kuro.")
    client = TrainerClient.connect(f"127.0.0.1:{port}")
    try:
        with _trainer_process(env, tmp_path / "trainer.log") as first:
            await _serving(port)
            await client.init_adapter(ADAPTER, LoraSpec(rank=8, alpha=16))
            config = {"steps": 8, "guided_rollouts": 0, "contrastive": False}
            job = await client.submit_job(ADAPTER, [_sample(sample)], config, "fb-killed")
            async for view in client.watch_job(job.job_id):
                if view.state is JobState.TRAINING and view.step >= 1:
                    break
            first.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.wait, PROCESS_TIMEOUT_S)
        assert (await storage.get_adapter(ADAPTER)).head_version == 1  # killed before its commit

        with _trainer_process(env, tmp_path / "trainer.log"):
            await _serving(port)
            final = [view async for view in client.watch_job(job.job_id)][-1]
            assert (final.state, final.base_version, final.new_version) == (JobState.SUCCEEDED, 1, 2), final.error
            assert len(final.metrics) == 8
            again = await client.submit_job(ADAPTER, [_sample(sample)], config, "fb-killed")
            assert again.job_id == job.job_id  # the retried submit is the same job, not a second training
    finally:
        await client.close()
    versions = await storage.list_versions(ADAPTER)
    assert [v.version for v in versions] == [1, 2]
    assert versions[1].lineage.job_id == job.job_id
    assert list(versions[1].lineage.completion_ids) == [sample.completion_id]


def _sample(proto: trainer_pb2.TrainSample) -> Sample:
    (converted,) = samples_from_proto([proto])
    return converted


async def _serving(port: int) -> None:
    """Returns once the trainer's health says SERVING (its model loaded and its jobs resumed)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = health_pb2.HealthCheckRequest(service="")
        watch = health_pb2_grpc.HealthStub(channel).Watch(request, wait_for_ready=True, timeout=PROCESS_TIMEOUT_S)
        async for reply in watch:
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                watch.cancel()
                return
