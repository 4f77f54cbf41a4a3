"""How other services call the trainer: one method per RPC, the trainer's domain types in and out.

Create one ``TrainerClient`` per process (``TrainerClient.connect``) and reuse it; every failed call raises
the ``services.common.errors`` class of its status code. A caller of several trainers uses a ``TrainerPool``,
which routes each adapter to its owner.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

import structlog
from claas.v1 import trainer_pb2, trainer_pb2_grpc

from services.common.client import ServiceClient
from services.common.convert import lora_to_proto
from services.common.domain import LoraSpec
from services.common.errors import NotFound, Unavailable
from services.common.peers import PeerSet
from services.common.rendezvous import ranked
from services.storage.convert import adapter_from_proto
from services.storage.domain import Adapter
from services.trainer import convert
from services.trainer.domain import JobView, Sample, TrainerInfo

log = structlog.get_logger("claas.trainer.client")

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


#: Job ids the pool remembers the trainer of; an older one is found again by asking every trainer.
REMEMBERED_JOBS = 10_000
#: How long a submit waits for the owner's channel to connect before the next trainer takes the job.
CONNECT_TIMEOUT_S = 2.0


class TrainerPool:
    """The trainer set as a caller sees it (DESIGN.md §11): each adapter's calls go to its owner by rendezvous
    hashing over the set's current members, so its jobs batch on one warm trainer whose version cache holds
    it. A trainer that cannot be reached hands its adapters to the next in each adapter's order. A job is
    then followed on the trainer that took it: the pool remembers where it sent each job, and asks every
    trainer about a job it does not know (another proxy replica's, or one from before a restart).

    Ownership is a matter of speed only: the head's compare-and-swap in storage keeps two trainers that
    train one adapter at once from losing a commit."""

    def __init__(self, peers: PeerSet, connect: Callable[[str], TrainerClient]) -> None:
        self._peers = peers
        self._connect = connect
        self._clients: dict[str, TrainerClient] = {}
        self._jobs: OrderedDict[str, str] = OrderedDict()

    @classmethod
    def connect(cls, spec: str, *, token: str = "", refresh_s: float = 10.0) -> TrainerPool:
        """A pool over ``spec`` ("host:port", a comma-separated list, or ``srv:<name>``; see
        ``services.common.peers``), every member's channel carrying ``token``."""
        return cls(PeerSet(spec, refresh_s=refresh_s), lambda member: TrainerClient.connect(member, token=token))

    async def close(self) -> None:
        await self._peers.stop()
        for client in self._clients.values():
            await client.close()
        self._clients.clear()

    async def order(self, adapter: str) -> list[str]:
        """The trainers in ``adapter``'s order of preference: its owner first."""
        return ranked(adapter, await self._members())

    async def _members(self) -> tuple[str, ...]:
        await self._peers.start()  # the first call resolves the set and starts following it; later ones return
        return self._peers.members()

    async def init_adapter(self, name: str, lora: LoraSpec) -> Adapter:
        """``TrainerClient.init_adapter`` on the adapter's owner (it then holds version 1 warm)."""
        member = await self._reachable(name)
        return await self._client(member).init_adapter(name, lora)

    async def submit_job(
        self,
        adapter: str,
        samples: Sequence[Sample],
        config: Mapping[str, Any] | None,
        idempotency_key: str,
    ) -> JobView:
        """``TrainerClient.submit_job`` on the adapter's owner, or on the next reachable trainer in its order.
        The job is sent to one trainer only: a submit that fails once sent is not tried elsewhere (that
        trainer may have queued it), so the caller resubmits with the same idempotency key."""
        member = await self._reachable(adapter)
        job = await self._client(member).submit_job(adapter, samples, config, idempotency_key)
        self._remember(job.job_id, member)
        return job

    async def get_job(self, job_id: str) -> JobView:
        member, job = await self._locate(job_id)
        if job is not None:
            return job
        with self._forgotten_if_lost(job_id):
            return await self._client(member).get_job(job_id)

    async def watch_job(self, job_id: str) -> AsyncIterator[JobView]:
        member, _ = await self._locate(job_id)
        with self._forgotten_if_lost(job_id):
            async for job in self._client(member).watch_job(job_id):
                yield job

    async def cancel_job(self, job_id: str) -> JobView:
        member, _ = await self._locate(job_id)
        with self._forgotten_if_lost(job_id):
            return await self._client(member).cancel_job(job_id)

    @contextlib.contextmanager
    def _forgotten_if_lost(self, job_id: str) -> Iterator[None]:
        """A trainer that cannot be reached is no longer where the job is asked for: every trainer reads the
        job records, so the next call asks them all (the job may have moved to one of them)."""
        try:
            yield
        except Unavailable:
            self._jobs.pop(job_id, None)
            raise

    def _client(self, member: str) -> TrainerClient:
        if member not in self._clients:
            self._clients[member] = self._connect(member)
        return self._clients[member]

    def _remember(self, job_id: str, member: str) -> None:
        self._jobs[job_id] = member
        self._jobs.move_to_end(job_id)
        while len(self._jobs) > REMEMBERED_JOBS:
            self._jobs.popitem(last=False)

    async def _reachable(self, adapter: str) -> str:
        """The first trainer in the adapter's order whose channel connects (a pod that is gone leaves an
        ``srv:`` set by itself; a fixed list keeps it, so its channel is asked)."""
        order = await self.order(adapter)
        if not order:
            raise Unavailable(f"no trainer in {self._peers.spec!r} is ready; retry in a moment")
        for member in order:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await self._client(member).channel.channel_ready()
                return member
            except TimeoutError:
                log.warning("trainer_unreachable", trainer=member, adapter=adapter)
        raise Unavailable(f"none of the {len(order)} trainers in {self._peers.spec!r} is reachable; retry in a moment")

    async def _locate(self, job_id: str) -> tuple[str, JobView | None]:
        """The trainer that holds ``job_id`` and, when it had to be asked, the job as it answered."""
        if job_id in self._jobs:
            return self._jobs[job_id], None
        members = await self._members()
        answers = await asyncio.gather(*(self._client(m).get_job(job_id) for m in members), return_exceptions=True)
        for member, answer in zip(members, answers, strict=True):
            if isinstance(answer, JobView):
                self._remember(job_id, member)
                return member, answer
        unreachable = [m for m, a in zip(members, answers, strict=True) if isinstance(a, Unavailable)]
        for answer in answers:
            if isinstance(answer, BaseException) and not isinstance(answer, NotFound | Unavailable):
                raise answer
        if unreachable:
            raise Unavailable(f"job {job_id!r} is on no reachable trainer; {len(unreachable)} cannot be reached")
        raise NotFound(f"job {job_id!r} not found on any trainer", param="job_id")
