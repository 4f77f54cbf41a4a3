"""Storage protos <-> storage's domain types, both ways: the servicer sends what the client receives."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

from claas.v1 import common_pb2, storage_pb2

from services.common.convert import (
    lineage_from_proto,
    lineage_to_proto,
    lora_from_proto,
    lora_to_proto,
    timestamp_from_proto,
    timestamp_to_proto,
)
from services.common.errors import InvalidArgument
from services.storage.domain import (
    Adapter,
    Chunk,
    FileEntry,
    HeadEvent,
    UploadHeader,
    Version,
)


def adapter_to_proto(adapter: Adapter) -> storage_pb2.Adapter:
    return storage_pb2.Adapter(
        name=adapter.name,
        base_model=adapter.base_model,
        lora=lora_to_proto(adapter.lora),
        head_version=adapter.head_version,
        tags=adapter.tags,
        created_at=timestamp_to_proto(adapter.created_at),
        generation=adapter.generation,
        committed_jobs=adapter.committed_jobs,
    )


def adapter_from_proto(adapter: storage_pb2.Adapter) -> Adapter:
    return Adapter(
        name=adapter.name,
        base_model=adapter.base_model,
        lora=lora_from_proto(adapter.lora),
        head_version=adapter.head_version,
        tags=dict(adapter.tags),
        created_at=timestamp_from_proto(adapter.created_at),
        generation=adapter.generation or 1,
        committed_jobs=dict(adapter.committed_jobs),
    )


def file_to_proto(entry: FileEntry) -> common_pb2.FileEntry:
    return common_pb2.FileEntry(path=entry.path, size=entry.size, sha256=entry.sha256)


def file_from_proto(entry: common_pb2.FileEntry) -> FileEntry:
    return FileEntry(entry.path, entry.size, entry.sha256)


def version_to_proto(version: Version) -> storage_pb2.Version:
    return storage_pb2.Version(
        name=version.name,
        version=version.version,
        parent_version=version.parent_version,
        files=[file_to_proto(f) for f in version.files],
        lineage=lineage_to_proto(version.lineage),
        created_at=timestamp_to_proto(version.created_at),
    )


def version_from_proto(version: storage_pb2.Version) -> Version:
    return Version(
        name=version.name,
        version=version.version,
        parent_version=version.parent_version,
        files=tuple(file_from_proto(f) for f in version.files),
        lineage=lineage_from_proto(version.lineage),
        created_at=timestamp_from_proto(version.created_at),
    )


def header_to_proto(header: UploadHeader) -> storage_pb2.PutVersionHeader:
    return storage_pb2.PutVersionHeader(
        name=header.name,
        parent_version=header.parent_version,
        files=[file_to_proto(f) for f in header.files],
        lineage=lineage_to_proto(header.lineage),
        set_head=header.set_head,
        incarnation=header.incarnation,
    )


def header_from_proto(header: storage_pb2.PutVersionHeader) -> UploadHeader:
    if header.incarnation:
        _check_incarnation(header.incarnation)
    return UploadHeader(
        name=header.name,
        parent_version=header.parent_version,
        files=tuple(file_from_proto(f) for f in header.files),
        lineage=lineage_from_proto(header.lineage),
        set_head=header.set_head,
        incarnation=header.incarnation,
    )


def _check_incarnation(incarnation: str) -> None:
    """An incarnation is a creation time; anything else is the caller's mistake, not a deleted adapter."""
    try:
        datetime.fromisoformat(incarnation)
    except ValueError:
        raise InvalidArgument(
            f"incarnation must be the adapter's created_at (RFC 3339) or empty, got {incarnation[:80]!r}",
            param="incarnation",
        ) from None


async def upload_from_proto(
    requests: AsyncIterator[storage_pb2.PutVersionRequest],
) -> AsyncIterator[UploadHeader | Chunk]:
    async for request in requests:
        kind = request.WhichOneof("msg")
        if kind == "header":
            yield header_from_proto(request.header)
        elif kind == "chunk":
            yield chunk_from_proto(request.chunk)
        else:
            raise InvalidArgument("PutVersionRequest carries neither a header nor a chunk")


def chunk_to_proto(chunk: Chunk) -> common_pb2.FileChunk:
    return common_pb2.FileChunk(path=chunk.path, offset=chunk.offset, data=chunk.data)


def chunk_from_proto(chunk: common_pb2.FileChunk) -> Chunk:
    return Chunk(chunk.path, chunk.offset, chunk.data)


def event_to_proto(event: HeadEvent) -> storage_pb2.WatchHeadsResponse:
    return storage_pb2.WatchHeadsResponse(
        name=event.name,
        head_version=event.head,
        previous_head=event.previous,
        deleted=event.deleted,
        synced=event.synced,
        generation=event.generation,
    )


def event_from_proto(event: storage_pb2.WatchHeadsResponse) -> HeadEvent:
    return HeadEvent(
        name=event.name,
        head=event.head_version,
        previous=event.previous_head,
        deleted=event.deleted,
        synced=event.synced,
        generation=event.generation or 1,
    )
