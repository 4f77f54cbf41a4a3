"""The gRPC edge of storage: convert, call the core, convert back."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
from claas.v1 import storage_pb2, storage_pb2_grpc

from services.common.convert import lora_from_proto
from services.storage import convert
from services.storage.core import AdapterStore


class AdapterStoreServicer(storage_pb2_grpc.AdapterStoreServiceServicer):
    def __init__(self, core: AdapterStore) -> None:
        self._core = core

    async def CreateAdapter(self, request, context: grpc.aio.ServicerContext) -> storage_pb2.CreateAdapterResponse:
        lora = lora_from_proto(request.lora)
        record = await self._core.create_adapter(request.name, request.base_model, lora)
        return storage_pb2.CreateAdapterResponse(adapter=convert.adapter_to_proto(record.public()))

    async def GetAdapter(self, request, context: grpc.aio.ServicerContext) -> storage_pb2.GetAdapterResponse:
        record = await self._core.get_adapter(request.name)
        return storage_pb2.GetAdapterResponse(adapter=convert.adapter_to_proto(record.public()))

    async def ListAdapters(self, request, context: grpc.aio.ServicerContext) -> storage_pb2.ListAdaptersResponse:
        records, token = await self._core.list_adapters(request.prefix, request.page_size, request.page_token)
        adapters = [convert.adapter_to_proto(r.public()) for r in records]
        return storage_pb2.ListAdaptersResponse(adapters=adapters, next_page_token=token)

    async def DeleteAdapter(self, request, context: grpc.aio.ServicerContext) -> storage_pb2.DeleteAdapterResponse:
        return storage_pb2.DeleteAdapterResponse(deleted=await self._core.delete_adapter(request.name))

    async def PutVersion(self, request_iterator, context: grpc.aio.ServicerContext) -> storage_pb2.PutVersionResponse:
        info, record = await self._core.put_version(convert.upload_from_proto(request_iterator))
        return storage_pb2.PutVersionResponse(
            version=convert.version_to_proto(info), adapter=convert.adapter_to_proto(record.public())
        )

    async def GetVersion(
        self, request, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[storage_pb2.GetVersionResponse]:
        info, chunks = await self._core.read_version(
            request.name,
            request.version,
            include_optimizer=request.include_optimizer,
            header_only=request.header_only,
        )
        yield storage_pb2.GetVersionResponse(header=convert.version_to_proto(info))
        # Closed at once when the caller goes away: the stream holds one of storage's transfer slots.
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield storage_pb2.GetVersionResponse(chunk=convert.chunk_to_proto(chunk))

    async def ListVersions(self, request, context: grpc.aio.ServicerContext) -> storage_pb2.ListVersionsResponse:
        versions, token = await self._core.list_versions(request.name, request.page_size, request.page_token)
        return storage_pb2.ListVersionsResponse(
            versions=[convert.version_to_proto(v) for v in versions], next_page_token=token
        )

    async def SetHead(self, request, context: grpc.aio.ServicerContext) -> storage_pb2.SetHeadResponse:
        record = await self._core.set_head(request.name, request.expected_head, request.version)
        return storage_pb2.SetHeadResponse(adapter=convert.adapter_to_proto(record.public()))

    async def SetTag(self, request, context: grpc.aio.ServicerContext) -> storage_pb2.SetTagResponse:
        record = await self._core.set_tag(request.name, request.tag, request.version)
        return storage_pb2.SetTagResponse(adapter=convert.adapter_to_proto(record.public()))

    async def WatchHeads(
        self, request, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[storage_pb2.WatchHeadsResponse]:
        async for event in self._core.watch(request.prefix, send_initial=request.send_initial):
            yield convert.event_to_proto(event)
