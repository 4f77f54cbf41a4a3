"""The trainer as the proxy's core sees it: typed calls over one channel, failures as our errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from claas.v1 import common_pb2, storage_pb2, trainer_pb2, trainer_pb2_grpc

from services.common.client import open_channel
from services.common.errors import from_rpc_error

_SERVICE = "claas.v1.TrainerService"
#: Safe to retry on UNAVAILABLE: reads, and the submit (the idempotency key makes a retry the same job).
IDEMPOTENT = tuple((_SERVICE, m) for m in ("GetJob", "SubmitJob", "Info"))
#: Building version 1 loads nothing new but writes through storage: allow it some time.
INIT_TIMEOUT_S = 120.0


class TrainerClient:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self._stub = trainer_pb2_grpc.TrainerServiceStub(channel)

    @classmethod
    def connect(cls, target: str, *, token: str = "") -> TrainerClient:
        return cls(open_channel(target, token=token, idempotent=IDEMPOTENT))

    async def close(self) -> None:
        await self.channel.close()

    async def init_adapter(self, name: str, lora: common_pb2.LoraSpec) -> storage_pb2.Adapter:
        request = trainer_pb2.InitAdapterRequest(name=name, lora=lora)
        try:
            response = await self._stub.InitAdapter(request, timeout=INIT_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        return response.adapter

    async def submit_job(
        self,
        adapter: str,
        samples: list[trainer_pb2.TrainSample],
        config: common_pb2.SdpoConfig | None,
        idempotency_key: str,
    ) -> common_pb2.JobStatus:
        request = trainer_pb2.SubmitJobRequest(
            adapter=adapter, samples=samples, config=config, idempotency_key=idempotency_key
        )
        try:
            return (await self._stub.SubmitJob(request)).job
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None

    async def get_job(self, job_id: str) -> common_pb2.JobStatus:
        try:
            return (await self._stub.GetJob(trainer_pb2.GetJobRequest(job_id=job_id))).job
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None

    async def watch_job(self, job_id: str) -> AsyncIterator[common_pb2.JobStatus]:
        call = self._stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job_id))
        try:
            async for event in call:
                yield event.job
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()
