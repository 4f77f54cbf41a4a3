"""The gRPC edge of the proxy: convert, call the core, convert back. The caller's tenant comes from the
API key the server interceptor authenticated."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
from claas.v1 import common_pb2, proxy_pb2, proxy_pb2_grpc

from services.common.auth import current_principal
from services.proxy import convert
from services.proxy.adapters import Adapters
from services.proxy.core import ProxyCore
from services.proxy.tenancy import tenant_of
from services.proxy.types import ChatResult, Started
from services.storage.layout import CHUNK_BYTES

#: The proxy's core once it has started (calls before that are UNAVAILABLE).
CoreRef = Callable[[], ProxyCore]


def _tenant() -> str:
    return tenant_of(current_principal())


class InferenceServicer(proxy_pb2_grpc.InferenceServiceServicer):
    def __init__(self, core: CoreRef) -> None:
        self._core = core

    async def Chat(self, request: proxy_pb2.ChatRequest, context: grpc.aio.ServicerContext) -> proxy_pb2.ChatResponse:
        result = await self._core().inference.chat(_tenant(), convert.chat_request(request))
        return convert.chat_response(result)

    async def ChatStream(
        self, request: proxy_pb2.ChatStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[proxy_pb2.ChatStreamResponse]:
        events = self._core().inference.chat_stream(_tenant(), convert.chat_request(request))
        try:
            async for event in events:
                if isinstance(event, ChatResult):
                    yield proxy_pb2.ChatStreamResponse(final=convert.chat_response(event))
                elif not isinstance(event, Started):
                    yield proxy_pb2.ChatStreamResponse(delta=event)
        finally:
            await events.aclose()  # a client gone mid-stream cancels the request in vLLM at once


class FeedbackServicer(proxy_pb2_grpc.FeedbackServiceServicer):
    def __init__(self, core: CoreRef) -> None:
        self._core = core

    async def Submit(
        self, request: proxy_pb2.FeedbackServiceSubmitRequest, context: grpc.aio.ServicerContext
    ) -> proxy_pb2.FeedbackServiceSubmitResponse:
        job = await self._core().feedback.submit(
            _tenant(),
            list(request.completion_ids),
            request.feedback,
            request.config if request.HasField("config") else None,
            wait=request.wait,
            idempotency_key=request.idempotency_key,
        )
        return proxy_pb2.FeedbackServiceSubmitResponse(job=job)

    async def Watch(
        self, request: proxy_pb2.FeedbackServiceWatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[proxy_pb2.FeedbackServiceWatchResponse]:
        async for job in self._core().feedback.watch(_tenant(), request.job_id):
            yield proxy_pb2.FeedbackServiceWatchResponse(job=job)


class AdaptersServicer(proxy_pb2_grpc.AdaptersServiceServicer):
    def __init__(self, core: CoreRef) -> None:
        self._core = core

    def _adapters(self) -> Adapters:
        return self._core().adapters

    async def Create(
        self, request: proxy_pb2.AdaptersServiceCreateRequest, context: grpc.aio.ServicerContext
    ) -> proxy_pb2.AdaptersServiceCreateResponse:
        lora = request.lora if request.HasField("lora") else None
        return proxy_pb2.AdaptersServiceCreateResponse(
            adapter=await self._adapters().create(_tenant(), request.name, lora)
        )

    async def List(
        self, request: proxy_pb2.AdaptersServiceListRequest, context: grpc.aio.ServicerContext
    ) -> proxy_pb2.AdaptersServiceListResponse:
        return proxy_pb2.AdaptersServiceListResponse(adapters=await self._adapters().list(_tenant()))

    async def Get(
        self, request: proxy_pb2.AdaptersServiceGetRequest, context: grpc.aio.ServicerContext
    ) -> proxy_pb2.AdaptersServiceGetResponse:
        return proxy_pb2.AdaptersServiceGetResponse(adapter=await self._adapters().get(_tenant(), request.name))

    async def Versions(
        self, request: proxy_pb2.AdaptersServiceVersionsRequest, context: grpc.aio.ServicerContext
    ) -> proxy_pb2.AdaptersServiceVersionsResponse:
        versions = await self._adapters().versions(_tenant(), request.name)
        return proxy_pb2.AdaptersServiceVersionsResponse(versions=versions)

    async def Rollback(
        self, request: proxy_pb2.AdaptersServiceRollbackRequest, context: grpc.aio.ServicerContext
    ) -> proxy_pb2.AdaptersServiceRollbackResponse:
        adapter = await self._adapters().rollback(_tenant(), request.name, request.version)
        return proxy_pb2.AdaptersServiceRollbackResponse(adapter=adapter)

    async def Delete(
        self, request: proxy_pb2.AdaptersServiceDeleteRequest, context: grpc.aio.ServicerContext
    ) -> proxy_pb2.AdaptersServiceDeleteResponse:
        return proxy_pb2.AdaptersServiceDeleteResponse(deleted=await self._adapters().delete(_tenant(), request.name))

    async def Export(
        self, request: proxy_pb2.AdaptersServiceExportRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[proxy_pb2.AdaptersServiceExportResponse]:
        header, files = await self._adapters().export(_tenant(), request.name, request.version)
        yield proxy_pb2.AdaptersServiceExportResponse(header=header)
        for entry in header.files:
            data = files[entry.path]
            for offset in range(0, len(data), CHUNK_BYTES):
                chunk = common_pb2.FileChunk(path=entry.path, offset=offset, data=data[offset : offset + CHUNK_BYTES])
                yield proxy_pb2.AdaptersServiceExportResponse(chunk=chunk)
