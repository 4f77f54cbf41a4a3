"""Proto messages <-> storage core types."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from claas.v1 import common_pb2, storage_pb2
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.errors import InvalidArgument
from services.storage.records import (
    AdapterRecord,
    Chunk,
    FileEntry,
    HeadEvent,
    LoraSpec,
    UploadHeader,
    VersionInfo,
)


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def lora_from_proto(spec: common_pb2.LoraSpec) -> LoraSpec:
    return LoraSpec(rank=spec.rank, alpha=spec.alpha, target_modules=tuple(spec.target_modules), dropout=spec.dropout)


def adapter_to_proto(record: AdapterRecord) -> storage_pb2.Adapter:
    lora = record.lora
    return storage_pb2.Adapter(
        name=record.name,
        base_model=record.base_model,
        lora=common_pb2.LoraSpec(
            rank=lora.rank, alpha=lora.alpha, target_modules=lora.target_modules, dropout=lora.dropout
        ),
        head_version=record.head,
        tags=record.tags,
        created_at=_timestamp(record.created_at),
    )


def _file_to_proto(entry: FileEntry) -> common_pb2.FileEntry:
    return common_pb2.FileEntry(path=entry.path, size=entry.size, sha256=entry.sha256)


def version_to_proto(info: VersionInfo) -> storage_pb2.Version:
    lineage = json_format.ParseDict(info.lineage, common_pb2.Lineage(), ignore_unknown_fields=True)
    return storage_pb2.Version(
        name=info.name,
        version=info.version,
        parent_version=info.parent_version,
        files=[_file_to_proto(f) for f in info.files],
        lineage=lineage,
        created_at=_timestamp(info.created_at),
    )


def lineage_to_json(lineage: common_pb2.Lineage) -> dict[str, Any]:
    return json_format.MessageToDict(lineage, preserving_proto_field_name=True)


def header_from_proto(header: storage_pb2.PutVersionHeader) -> UploadHeader:
    return UploadHeader(
        name=header.name,
        parent_version=header.parent_version,
        files=tuple(FileEntry(f.path, f.size, f.sha256) for f in header.files),
        lineage=lineage_to_json(header.lineage),
        set_head=header.set_head,
    )


async def upload_from_proto(
    requests: AsyncIterator[storage_pb2.PutVersionRequest],
) -> AsyncIterator[UploadHeader | Chunk]:
    async for request in requests:
        kind = request.WhichOneof("msg")
        if kind == "header":
            yield header_from_proto(request.header)
        elif kind == "chunk":
            yield Chunk(request.chunk.path, request.chunk.offset, request.chunk.data)
        else:
            raise InvalidArgument("PutVersionRequest carries neither a header nor a chunk")


def chunk_to_proto(chunk: Chunk) -> storage_pb2.GetVersionResponse:
    return storage_pb2.GetVersionResponse(
        chunk=common_pb2.FileChunk(path=chunk.path, offset=chunk.offset, data=chunk.data)
    )


def event_to_proto(event: HeadEvent) -> storage_pb2.WatchHeadsResponse:
    return storage_pb2.WatchHeadsResponse(
        name=event.name, head_version=event.head, previous_head=event.previous, deleted=event.deleted
    )
