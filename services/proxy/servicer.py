"""The gRPC edge of the proxy: convert, call the core, convert back. The caller's tenant comes from the
API key the server interceptor authenticated."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
from claas.v1 import peer_pb2, peer_pb2_grpc, proxy_pb2, proxy_pb2_grpc

from services.common.auth import current_principal
from services.common.errors import PermissionDenied
from services.common.naming import check_tenant
from services.proxy import convert
from services.proxy.adapters import Adapters
from services.proxy.core import ProxyCore
from services.proxy.domain import ChatResult, Delta
from services.proxy.tenancy import tenant_of
from services.storage.convert import adapter_to_proto

#: The proxy's core once it has started (calls before that are UNAVAILABLE).
CoreRef = Callable[[], ProxyCore]

#: The three public services and the replicas' own, as health checks and reflection name them.
SERVICE_NAMES = [
    *(
        proxy_pb2.DESCRIPTOR.services_by_name[name].full_name
        for name in ("InferenceService", "FeedbackService", "AdaptersService")
    ),
    peer_pb2.DESCRIPTOR.services_by_name["ProxyPeerService"].full_name,
]


def add_servicers(server: grpc.aio.Server, core: CoreRef) -> None:
    """Register the three public services on ``server``, each over the core ``core`` returns."""
    proxy_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(core), server)
    proxy_pb2_grpc.add_FeedbackServiceServicer_to_server(FeedbackServicer(core), server)
    proxy_pb2_grpc.add_AdaptersServiceServicer_to_server(AdaptersServicer(core), server)
    peer_pb2_grpc.add_ProxyPeerServiceServicer_to_server(PeerServicer(core), server)


def _tenant() -> str:
    return tenant_of(current_principal())


class InferenceServicer(proxy_pb2_grpc.InferenceServiceServicer):
    """``claas.v1.InferenceService`` over the core's ``inference``."""

    def __init__(self, core: CoreRef) -> None:
        self._core = core

    async def Chat(self, request: proxy_pb2.ChatRequest, context: grpc.aio.ServicerContext) -> proxy_pb2.ChatResponse:
        result = await self._core().router.chat(_tenant(), convert.chat_request_from_proto(request))
        return convert.chat_result_to_proto(result)

    async def ChatStream(
        self, request: proxy_pb2.ChatStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[proxy_pb2.ChatStreamResponse]:
        events = self._core().router.chat_stream(_tenant(), convert.chat_request_from_proto(request))
        try:
            async for event in events:
                if isinstance(event, ChatResult):
                    yield proxy_pb2.ChatStreamResponse(final=convert.chat_result_to_proto(event))
                elif isinstance(event, Delta) and event.text:
                    yield proxy_pb2.ChatStreamResponse(delta=event.text)
        finally:
            await events.aclose()  # a client gone mid-stream cancels the request in vLLM at once

    async def Score(
        self, request: proxy_pb2.InferenceServiceScoreRequest, context: grpc.aio.ServicerContext
    ) -> proxy_pb2.InferenceServiceScoreResponse:
        result = await self._core().router.score(_tenant(), convert.score_request_from_proto(request))
        return convert.score_result_to_proto(result)


class PeerServicer(peer_pb2_grpc.ProxyPeerServiceServicer):
    """``claas.v1.ProxyPeerService``: calls another proxy replica forwarded here, for the tenant it names,
    served by this replica's vLLM (never forwarded again). Only the internal token may call it."""

    def __init__(self, core: CoreRef) -> None:
        self._core = core

    async def Serve(
        self, request: peer_pb2.ProxyPeerServiceServeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[peer_pb2.ProxyPeerServiceServeResponse]:
        if not current_principal().internal:
            raise PermissionDenied("ProxyPeerService is for proxy replicas only (the internal token)")
        tenant = check_tenant(request.tenant)
        call = convert.peer_request_from_proto(request)
        events = self._core().router.serve_forwarded(tenant, call, stream=request.stream, may_refuse=request.may_refuse)
        try:
            async for event in events:
                yield convert.peer_event_to_proto(event)
        finally:
            await events.aclose()  # the forwarding replica's caller left: the owner's vLLM request ends too


class FeedbackServicer(proxy_pb2_grpc.FeedbackServiceServicer):
    """``claas.v1.FeedbackService`` over the core's ``feedback``."""

    def __init__(self, core: CoreRef) -> None:
        self._core = core

    async def Submit(
        self, request: proxy_pb2.FeedbackServiceSubmitRequest, context: grpc.aio.ServicerContext
    ) -> proxy_pb2.FeedbackServiceSubmitResponse:
        job = await self._core().feedback.submit(
            _tenant(),
            list(request.completion_ids),
            request.feedback,
            convert.config_from_proto(request.config) if request.HasField("config") else None,
            wait=request.wait,
            idempotency_key=request.idempotency_key,
        )
        return proxy_pb2.FeedbackServiceSubmitResponse(job=convert.job_view_to_proto(job))

    async def Watch(
        self, request: proxy_pb2.FeedbackServiceWatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[proxy_pb2.FeedbackServiceWatchResponse]:
        async for job in self._core().feedback.watch(_tenant(), request.job_id):
            yield proxy_pb2.FeedbackServiceWatchResponse(job=convert.job_view_to_proto(job))

    async def List(
        self, request: proxy_pb2.FeedbackServiceListRequest, context: grpc.aio.ServicerContext
    ) -> proxy_pb2.FeedbackServiceListResponse:
        records, token = await self._core().feedback.records(
            _tenant(),
            adapter=request.adapter,
            state=convert.state_filter_from_proto(request.state),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return proxy_pb2.FeedbackServiceListResponse(
            records=[convert.record_to_proto(r) for r in records], next_page_token=token
        )


class AdaptersServicer(proxy_pb2_grpc.AdaptersServiceServicer):
    """``claas.v1.AdaptersService`` over the core's ``adapters``."""

    def __init__(self, core: CoreRef) -> None:
        self._core = core

    def _adapters(self) -> Adapters:
        return self._core().adapters

    async def Create(
        self, request: proxy_pb2.AdaptersServiceCreateRequest, context: grpc.aio.ServicerContext
    ) -> proxy_pb2.AdaptersServiceCreateResponse:
        lora = convert.lora_from_proto(request.lora) if request.HasField("lora") else None
        adapter = await self._adapters().create(_tenant(), request.name, lora)
        return proxy_pb2.AdaptersServiceCreateResponse(adapter=adapter_to_proto(adapter))

    async def List(
        self, request: proxy_pb2.AdaptersServiceListRequest, context: grpc.aio.ServicerContext
    ) -> proxy_pb2.AdaptersServiceListResponse:
        adapters = await self._adapters().list(_tenant())
        return proxy_pb2.AdaptersServiceListResponse(adapters=[adapter_to_proto(a) for a in adapters])

    async def Get(
        self, request: proxy_pb2.AdaptersServiceGetRequest, context: grpc.aio.ServicerContext
    ) -> proxy_pb2.AdaptersServiceGetResponse:
        adapter = await self._adapters().get(_tenant(), request.name)
        return proxy_pb2.AdaptersServiceGetResponse(adapter=adapter_to_proto(adapter))

    async def Versions(
        self, request: proxy_pb2.AdaptersServiceVersionsRequest, context: grpc.aio.ServicerContext
    ) -> proxy_pb2.AdaptersServiceVersionsResponse:
        versions, token = await self._adapters().versions(
            _tenant(), request.name, page_size=request.page_size, page_token=request.page_token
        )
        return proxy_pb2.AdaptersServiceVersionsResponse(
            versions=[convert.version_to_proto(v) for v in versions], next_page_token=token
        )

    async def Rollback(
        self, request: proxy_pb2.AdaptersServiceRollbackRequest, context: grpc.aio.ServicerContext
    ) -> proxy_pb2.AdaptersServiceRollbackResponse:
        adapter = await self._adapters().rollback(_tenant(), request.name, request.version)
        return proxy_pb2.AdaptersServiceRollbackResponse(adapter=adapter_to_proto(adapter))

    async def Delete(
        self, request: proxy_pb2.AdaptersServiceDeleteRequest, context: grpc.aio.ServicerContext
    ) -> proxy_pb2.AdaptersServiceDeleteResponse:
        return proxy_pb2.AdaptersServiceDeleteResponse(deleted=await self._adapters().delete(_tenant(), request.name))

    async def Export(
        self, request: proxy_pb2.AdaptersServiceExportRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[proxy_pb2.AdaptersServiceExportResponse]:
        header, chunks = await self._adapters().export(_tenant(), request.name, request.version)
        async for response in convert.export_to_proto(header, chunks):
            yield response
