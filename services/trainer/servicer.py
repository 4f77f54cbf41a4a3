"""The gRPC edge of the trainer: convert, call the core, convert back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
from claas.v1 import trainer_pb2, trainer_pb2_grpc

from services.common.convert import lora_from_proto
from services.trainer import convert
from services.trainer.core import TrainerCore


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    """``core`` returns the core, or raises Unavailable while the model is still loading."""

    def __init__(self, core: Callable[[], TrainerCore]) -> None:
        self._core = core

    async def InitAdapter(self, request, context: grpc.aio.ServicerContext) -> trainer_pb2.InitAdapterResponse:
        adapter, version = await self._core().init_adapter(request.name, lora_from_proto(request.lora))
        return convert.init_response_to_proto(adapter, version)

    async def SubmitJob(self, request, context: grpc.aio.ServicerContext) -> trainer_pb2.SubmitJobResponse:
        view = await self._core().submit(
            request.adapter,
            convert.samples_from_proto(request.samples),
            convert.config_from_proto(request.config),
            request.idempotency_key,
        )
        return trainer_pb2.SubmitJobResponse(job=convert.job_view_to_proto(view))

    async def WatchJob(self, request, context: grpc.aio.ServicerContext) -> AsyncIterator[trainer_pb2.WatchJobResponse]:
        async for view in self._core().watch_job(request.job_id):
            yield trainer_pb2.WatchJobResponse(job=convert.job_view_to_proto(view))

    async def GetJob(self, request, context: grpc.aio.ServicerContext) -> trainer_pb2.GetJobResponse:
        view = await self._core().get_job(request.job_id)
        return trainer_pb2.GetJobResponse(job=convert.job_view_to_proto(view))

    async def CancelJob(self, request, context: grpc.aio.ServicerContext) -> trainer_pb2.CancelJobResponse:
        view = await self._core().cancel_job(request.job_id)
        return trainer_pb2.CancelJobResponse(job=convert.job_view_to_proto(view))

    async def Info(self, request, context: grpc.aio.ServicerContext) -> trainer_pb2.TrainerServiceInfoResponse:
        return convert.info_to_proto(self._core().info())
