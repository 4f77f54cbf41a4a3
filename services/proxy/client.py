"""How users and tools call the proxy over gRPC: one method per RPC, domain types in and out.

The proxy serves three gRPC services, so there are three clients, one per service, and ``ProxyClient``
holds one of each over a single channel. The API key is the channel's token; every failed call raises the
``services.common.errors`` class of its status code::

    client = ProxyClient.connect("127.0.0.1:50050", token=api_key)
    reply = await client.inference.chat(ChatRequest("bot", (Message("user", "Hi"),)))
    job = await client.feedback.submit([reply.completion_id], "Shorter.", wait=True)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Self

import grpc
from claas.v1 import peer_pb2_grpc, proxy_pb2, proxy_pb2_grpc

from services.common.client import ServiceClient, open_channel
from services.common.convert import lora_to_proto
from services.common.domain import LoraSpec
from services.proxy import convert
from services.proxy.audit import FeedbackRecord
from services.proxy.domain import ChatRequest, ChatResult, PeerCall, PeerEvent, ScoreRequest, ScoreResult
from services.storage.domain import Adapter, Version
from services.trainer.domain import JobState, JobView


class InferenceClient(ServiceClient):
    """``claas.v1.InferenceService``: chat with the base model or one of the caller's adapters, and score
    completions under them."""

    SERVICE = "claas.v1.InferenceService"
    #: A chat samples anew and records a new completion: never retried. A score is a read.
    IDEMPOTENT = ("Score",)

    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float | None = None) -> None:
        super().__init__(channel)
        self._stub = proxy_pb2_grpc.InferenceServiceStub(channel)
        self._timeout = timeout_s

    async def chat(self, request: ChatRequest) -> ChatResult:
        """The whole answer (``created`` is 0: gRPC does not carry it)."""
        response = await self._unary(self._stub.Chat, convert.chat_request_to_proto(request), timeout=self._timeout)
        return convert.chat_result_from_proto(response, request.model)

    async def chat_stream(self, request: ChatRequest) -> AsyncIterator[str | ChatResult]:
        """Text deltas as they are generated, then the ``ChatResult`` with the whole answer."""
        proto = convert.chat_request_to_proto(request, stream=True)
        async for event in self._stream(self._stub.ChatStream, proto, timeout=self._timeout):
            if event.HasField("final"):
                yield convert.chat_result_from_proto(event.final, request.model)
            else:
                yield event.delta

    async def score(self, request: ScoreRequest) -> ScoreResult:
        """Teacher-forced log-probs of ``request.completion`` after ``request.messages`` (version 0 = head)."""
        response = await self._unary(self._stub.Score, convert.score_request_to_proto(request), timeout=self._timeout)
        return convert.score_result_from_proto(response)


class FeedbackClient(ServiceClient):
    """``claas.v1.FeedbackService``: feedback on completions becomes a training job of their adapter."""

    SERVICE = "claas.v1.FeedbackService"
    #: The submit is deduplicated by its idempotency key (given or derived): a retry is the same job.
    IDEMPOTENT = ("Submit", "Watch", "List")

    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float | None = None) -> None:
        super().__init__(channel)
        self._stub = proxy_pb2_grpc.FeedbackServiceStub(channel)
        self._timeout = timeout_s

    async def submit(
        self,
        completion_ids: Sequence[str],
        feedback: str,
        config: Mapping[str, Any] | None = None,
        *,
        wait: bool = False,
        idempotency_key: str = "",
    ) -> JobView:
        """Queue the job; with ``wait`` return once it ended (and its version is served). ``config`` holds
        SDPO overrides keyed by ``common.proto``'s ``SdpoConfig`` field names."""
        request = proxy_pb2.FeedbackServiceSubmitRequest(
            completion_ids=list(completion_ids),
            feedback=feedback,
            config=convert.config_to_proto(config),
            wait=wait,
            idempotency_key=idempotency_key,
        )
        response = await self._unary(self._stub.Submit, request, timeout=self._timeout)
        return convert.job_view_from_proto(response.job)

    async def watch(self, job_id: str) -> AsyncIterator[JobView]:
        """The job's state now and after every change, until it ends."""
        request = proxy_pb2.FeedbackServiceWatchRequest(job_id=job_id)
        async for event in self._stream(self._stub.Watch, request, timeout=self._timeout):
            yield convert.job_view_from_proto(event.job)

    async def records(
        self, *, adapter: str = "", state: JobState | None = None, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[FeedbackRecord], str]:
        """A page of the caller's feedback records, newest first, and the next page's token ("" after the last)."""
        request = proxy_pb2.FeedbackServiceListRequest(
            adapter=adapter,
            state=convert.job_state_to_proto(state) if state else 0,
            page_size=page_size,
            page_token=page_token,
        )
        response = await self._unary(self._stub.List, request, timeout=self._timeout)
        return [convert.record_from_proto(r) for r in response.records], response.next_page_token


class AdaptersClient(ServiceClient):
    """``claas.v1.AdaptersService``: the caller's adapters ("adapter" or "tenant/adapter" names)."""

    SERVICE = "claas.v1.AdaptersService"
    #: Reads; a delete of what is gone is a no-op; a rollback to the version the head is at changes nothing.
    IDEMPOTENT = ("List", "Get", "Versions", "Rollback", "Delete", "Export")

    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float | None = None) -> None:
        super().__init__(channel)
        self._stub = proxy_pb2_grpc.AdaptersServiceStub(channel)
        self._timeout = timeout_s

    async def create(self, name: str, lora: LoraSpec | None = None) -> Adapter:
        """A new adapter at version 1 (answers exactly like the base model)."""
        request = proxy_pb2.AdaptersServiceCreateRequest(name=name, lora=lora_to_proto(lora) if lora else None)
        return convert.adapter_from_proto((await self._call(self._stub.Create, request)).adapter)

    async def list(self) -> list[Adapter]:
        response = await self._call(self._stub.List, proxy_pb2.AdaptersServiceListRequest())
        return [convert.adapter_from_proto(a) for a in response.adapters]

    async def get(self, name: str) -> Adapter:
        response = await self._call(self._stub.Get, proxy_pb2.AdaptersServiceGetRequest(name=name))
        return convert.adapter_from_proto(response.adapter)

    async def versions(self, name: str) -> list[Version]:
        """Every committed version with its lineage, oldest first, following the pages."""
        versions: list[Version] = []
        token = ""
        while True:
            request = proxy_pb2.AdaptersServiceVersionsRequest(name=name, page_token=token)
            response = await self._call(self._stub.Versions, request)
            versions.extend(convert.version_from_proto(v) for v in response.versions)
            token = response.next_page_token
            if not token:
                return versions

    async def rollback(self, name: str, version: int) -> Adapter:
        """Point the head at ``version``; the next chat is served by it."""
        request = proxy_pb2.AdaptersServiceRollbackRequest(name=name, version=version)
        return convert.adapter_from_proto((await self._call(self._stub.Rollback, request)).adapter)

    async def delete(self, name: str) -> bool:
        """True when something was deleted."""
        response = await self._call(self._stub.Delete, proxy_pb2.AdaptersServiceDeleteRequest(name=name))
        return response.deleted

    async def export(self, name: str, version: int = 0) -> tuple[Version, dict[str, bytes]]:
        """A version's PEFT files (0 = head), each checked against its SHA-256 (``DataLoss`` if one is not)."""
        request = proxy_pb2.AdaptersServiceExportRequest(name=name, version=version)
        return await convert.export_from_proto(self._stream(self._stub.Export, request, timeout=self._timeout))

    async def _call(self, method: Any, request: Any) -> Any:
        return await self._unary(method, request, timeout=self._timeout)


class ProxyClient:
    """The proxy's public gRPC API over one channel: ``inference``, ``feedback`` and ``adapters``.

    ``timeout_s`` is the deadline of every call (``None``: the channel's default for unary calls, none for
    streams). Create one per process and reuse it; ``close`` when done.
    """

    PARTS = (InferenceClient, FeedbackClient, AdaptersClient)

    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float | None = None) -> None:
        self.channel = channel
        self.inference = InferenceClient(channel, timeout_s=timeout_s)
        self.feedback = FeedbackClient(channel, timeout_s=timeout_s)
        self.adapters = AdaptersClient(channel, timeout_s=timeout_s)

    @classmethod
    def connect(cls, target: str, *, token: str = "", timeout_s: float | None = None, max_message_mb: int = 16) -> Self:
        """A client over a new channel to ``target`` ("host:port") that sends ``token`` (an API key)."""
        idempotent = [(part.SERVICE, method) for part in cls.PARTS for method in part.IDEMPOTENT]
        channel = open_channel(target, token=token, idempotent=idempotent, max_message_mb=max_message_mb)
        return cls(channel, timeout_s=timeout_s)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _PeerServiceClient(ServiceClient):
    """``claas.v1.ProxyPeerService`` of one proxy replica."""

    SERVICE = "claas.v1.ProxyPeerService"

    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float | None = None) -> None:
        super().__init__(channel)
        self._stub = peer_pb2_grpc.ProxyPeerServiceStub(channel)
        self._timeout = timeout_s

    async def serve(self, tenant: str, call: PeerCall, *, stream: bool, may_refuse: bool) -> AsyncIterator[PeerEvent]:
        request = convert.peer_request_to_proto(tenant, call, stream=stream, may_refuse=may_refuse)
        async for response in self._stream(self._stub.Serve, request, timeout=self._timeout):
            yield convert.peer_event_from_proto(response)


class PeerClient:
    """The other proxy replicas, as the one that forwards a call to an adapter's owner sees them
    (``services.proxy.routing``): a channel per replica, opened on first use, carrying the internal token.
    A forwarded call is never retried (its owner may have answered it); closing the event iterator cancels
    the call on the owner, and with it the request in the owner's vLLM."""

    def __init__(self, *, token: str, timeout_s: float | None = None, max_message_mb: int = 16) -> None:
        self._token = token
        self._timeout = timeout_s
        self._max_message_mb = max_message_mb
        self._clients: dict[str, _PeerServiceClient] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def serve(
        self, peer: str, tenant: str, call: PeerCall, *, stream: bool, may_refuse: bool
    ) -> AsyncIterator[PeerEvent]:
        """The events of ``call`` served by ``peer`` for ``tenant``: ``Busy`` alone when the owner refused."""
        client = self._clients.get(peer)
        if client is None:
            client = _PeerServiceClient.connect(
                peer, token=self._token, max_message_mb=self._max_message_mb, timeout_s=self._timeout
            )
            self._clients[peer] = client
        return client.serve(tenant, call, stream=stream, may_refuse=may_refuse)

    def keep(self, members: tuple[str, ...]) -> None:
        """Close the channels of replicas that left the set (pods come and go with new addresses)."""
        for peer in [p for p in self._clients if p not in members]:
            task = asyncio.ensure_future(self._clients.pop(peer).close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
        if self._closing:
            await asyncio.gather(*self._closing)
