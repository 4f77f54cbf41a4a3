"""How other services call the trainer: one method per RPC, the trainer's domain types in and out.

Create one ``TrainerClient`` per process (``TrainerClient.connect``) and reuse it; every failed call raises
the ``services.common.errors`` class of its status code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from claas.v1 import trainer_pb2, trainer_pb2_grpc

from services.common.client import ServiceClient
from services.common.convert import lora_to_proto
from services.common.domain import LoraSpec
from services.storage.convert import adapter_from_proto
from services.storage.domain import Adapter
from services.trainer import convert
from services.trainer.domain import JobView, Sample, TrainerInfo

#: Building version 1 loads nothing new but writes through storage: allow it some time.
INIT_TIMEOUT_S = 120.0


class TrainerClient(ServiceClient):
    """The trainer as its callers see it: adapters initialised, jobs submitted, watched and cancelled."""

    SERVICE = "claas.v1.TrainerService"
    #: Safe to retry on UNAVAILABLE: reads, and the submit (the idempotency key makes a retry the same job).
    IDEMPOTENT = ("GetJob", "SubmitJob", "Info")

    def __init__(self, channel) -> None:
        super().__init__(channel)
        self._stub = trainer_pb2_grpc.TrainerServiceStub(channel)

    async def init_adapter(self, name: str, lora: LoraSpec) -> Adapter:
        """Create ``name`` if missing and commit its version 1 (answers exactly like the base model)."""
        request = trainer_pb2.InitAdapterRequest(name=name, lora=lora_to_proto(lora))
        response = await self._unary(self._stub.InitAdapter, request, timeout=INIT_TIMEOUT_S)
        return adapter_from_proto(response.adapter)

    async def submit_job(
        self,
        adapter: str,
        samples: Sequence[Sample],
        config: Mapping[str, Any] | None,
        idempotency_key: str,
    ) -> JobView:
        """Queue a job; ``config`` holds SDPO overrides keyed by ``common.proto``'s field names (proto JSON)."""
        request = trainer_pb2.SubmitJobRequest(
            adapter=adapter,
            samples=[convert.sample_to_proto(s) for s in samples],
            config=convert.config_to_proto(config),
            idempotency_key=idempotency_key,
        )
        return convert.job_view_from_proto((await self._unary(self._stub.SubmitJob, request)).job)

    async def get_job(self, job_id: str) -> JobView:
        response = await self._unary(self._stub.GetJob, trainer_pb2.GetJobRequest(job_id=job_id))
        return convert.job_view_from_proto(response.job)

    async def watch_job(self, job_id: str) -> AsyncIterator[JobView]:
        """The job's state now and after every change, until it ends."""
        async for event in self._stream(self._stub.WatchJob, trainer_pb2.WatchJobRequest(job_id=job_id)):
            yield convert.job_view_from_proto(event.job)

    async def cancel_job(self, job_id: str) -> JobView:
        response = await self._unary(self._stub.CancelJob, trainer_pb2.CancelJobRequest(job_id=job_id))
        return convert.job_view_from_proto(response.job)

    async def info(self) -> TrainerInfo:
        return convert.info_from_proto(await self._unary(self._stub.Info, trainer_pb2.TrainerServiceInfoRequest()))
