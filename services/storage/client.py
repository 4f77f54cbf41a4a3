"""The client other services use to talk to storage: typed calls, verified transfers, our error family.

Create one ``StorageClient`` per process (``StorageClient.connect``) and reuse it; every failed call raises
the ``services.common.errors`` class of its status code (``Aborted`` when a compare-and-swap lost, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from claas.v1 import common_pb2, storage_pb2, storage_pb2_grpc

from services.common.client import ServiceClient, rpc_errors
from services.common.convert import lora_to_proto
from services.common.domain import Lineage, LoraSpec
from services.common.errors import DataLoss
from services.storage import convert
from services.storage.domain import Adapter, Chunk, FileEntry, HeadEvent, UploadHeader, Version
from services.storage.layout import chunks

#: Deadline of a whole upload or download stream.
TRANSFER_TIMEOUT_S = 600.0


class StorageClient(ServiceClient):
    """Storage as its callers see it: one method per RPC, storage's domain types in and out, every transfer
    checked against the sizes and SHA-256 of its manifest. Create one per process and reuse it."""

    SERVICE = "claas.v1.AdapterStoreService"
    #: Safe to retry on UNAVAILABLE: reads, and the delete (idempotent by contract).
    IDEMPOTENT = ("GetAdapter", "ListAdapters", "GetVersion", "ListVersions", "DeleteAdapter")

    def __init__(self, channel, *, transfer_timeout_s: float = TRANSFER_TIMEOUT_S) -> None:
        super().__init__(channel)
        self._stub = storage_pb2_grpc.AdapterStoreServiceStub(channel)
        self._transfer_timeout = transfer_timeout_s

    async def create_adapter(self, name: str, base_model: str, lora: LoraSpec) -> Adapter:
        request = storage_pb2.CreateAdapterRequest(name=name, base_model=base_model, lora=lora_to_proto(lora))
        return convert.adapter_from_proto((await self._unary(self._stub.CreateAdapter, request)).adapter)

    async def get_adapter(self, name: str) -> Adapter:
        response = await self._unary(self._stub.GetAdapter, storage_pb2.GetAdapterRequest(name=name))
        return convert.adapter_from_proto(response.adapter)

    async def list_adapters(self, prefix: str = "", *, page_size: int = 0) -> list[Adapter]:
        """Every adapter whose name starts with ``prefix``, following the pages."""
        adapters: list[Adapter] = []
        token = ""
        while True:
            request = storage_pb2.ListAdaptersRequest(prefix=prefix, page_size=page_size, page_token=token)
            page = await self._unary(self._stub.ListAdapters, request)
            adapters.extend(convert.adapter_from_proto(a) for a in page.adapters)
            token = page.next_page_token
            if not token:
                return adapters

    async def delete_adapter(self, name: str) -> bool:
        """True when something was deleted."""
        return (await self._unary(self._stub.DeleteAdapter, storage_pb2.DeleteAdapterRequest(name=name))).deleted

    async def list_versions(self, name: str) -> list[Version]:
        """Every committed version, oldest first, following the pages."""
        versions: list[Version] = []
        token = ""
        while True:
            page, token = await self.versions_page(name, page_token=token)
            versions.extend(page)
            if not token:
                return versions

    async def versions_page(self, name: str, *, page_size: int = 0, page_token: str = "") -> tuple[list[Version], str]:
        """One page of committed versions, oldest first, and the next page's token ("" after the last)."""
        request = storage_pb2.ListVersionsRequest(name=name, page_size=page_size, page_token=page_token)
        response = await self._unary(self._stub.ListVersions, request)
        return [convert.version_from_proto(v) for v in response.versions], response.next_page_token

    async def set_head(self, name: str, expected: int, version: int) -> Adapter:
        """Move the head from ``expected`` to ``version`` (rollback); ``errors.Aborted`` if it moved."""
        request = storage_pb2.SetHeadRequest(name=name, expected_head=expected, version=version)
        return convert.adapter_from_proto((await self._unary(self._stub.SetHead, request)).adapter)

    async def set_tag(self, name: str, tag: str, version: int) -> Adapter:
        """Point ``tag`` at ``version``; version 0 removes the tag."""
        request = storage_pb2.SetTagRequest(name=name, tag=tag, version=version)
        return convert.adapter_from_proto((await self._unary(self._stub.SetTag, request)).adapter)

    async def get_version(self, name: str, version: int = 0) -> Version:
        """The version's header only (0 = head), without its bytes."""
        request = storage_pb2.GetVersionRequest(name=name, version=version, header_only=True)
        header: Version | None = None
        async for item in self._download(request):
            if isinstance(item, Version):
                header = item
        if header is None:
            raise DataLoss(f"storage sent no header for {name} v{version}")
        return header

    async def upload_version(
        self,
        name: str,
        parent_version: int,
        files: dict[str, bytes],
        lineage: Lineage,
        *,
        set_head: bool = True,
        incarnation: str = "",
    ) -> Version:
        """Commit ``files`` as the version after ``parent_version``; ``errors.Aborted`` if the head moved,
        ``errors.FailedPrecondition`` if the adapter is no longer the ``incarnation`` given."""
        entries = tuple([FileEntry(path, len(data), await _sha256(data)) for path, data in files.items()])
        header = UploadHeader(name, parent_version, entries, lineage, set_head, incarnation)

        async def requests() -> AsyncIterator[storage_pb2.PutVersionRequest]:
            yield storage_pb2.PutVersionRequest(header=convert.header_to_proto(header))
            for path, data in files.items():
                for offset, piece in chunks(data):
                    yield storage_pb2.PutVersionRequest(chunk=convert.chunk_to_proto(Chunk(path, offset, piece)))

        with rpc_errors():
            response = await self._stub.PutVersion(requests(), timeout=self._transfer_timeout)
        return convert.version_from_proto(response.version)

    async def read_version(
        self, name: str, version: int = 0, *, include_optimizer: bool = False
    ) -> tuple[Version, dict[str, bytes]]:
        """A version (0 = head) and its files in memory, each checked against its size and SHA-256."""
        request = storage_pb2.GetVersionRequest(name=name, version=version, include_optimizer=include_optimizer)
        header: Version | None = None
        parts: dict[str, _Received] = {}
        async for item in self._download(request):
            if isinstance(item, Version):
                header = item
            else:
                parts.setdefault(item.path, _Received()).add(item)
        if header is None:
            raise DataLoss(f"storage sent no header for {name} v{version}")
        files = {}
        for entry in header.files:
            files[entry.path] = parts.get(entry.path, _Received()).verified(entry)
        return header, files

    async def download_version(
        self, name: str, version: int, dest: Path, *, include_optimizer: bool = False
    ) -> Version:
        """Write a version's files (0 = head) into ``dest``, created if missing. Files stream into hidden
        temporary files and are renamed into place only once every file of the version is verified, so a
        failed download leaves no file of it behind."""
        request = storage_pb2.GetVersionRequest(name=name, version=version, include_optimizer=include_optimizer)
        dest.mkdir(parents=True, exist_ok=True)
        sinks: dict[str, _FileSink] = {}
        header: Version | None = None
        try:
            async for item in self._download(request):
                if isinstance(item, Version):
                    header = item
                else:
                    if item.path not in sinks:
                        sinks[item.path] = _FileSink(dest, item.path)
                    sinks[item.path].add(item)
            if header is None:
                raise DataLoss(f"storage sent no header for {name} v{version}")
            for entry in header.files:
                if entry.path not in sinks:  # an empty file has no chunk
                    sinks[entry.path] = _FileSink(dest, entry.path)
                sinks[entry.path].verify(entry)
            for sink in sinks.values():
                sink.publish()
        finally:
            for sink in sinks.values():
                sink.discard()
        return header

    async def _download(self, request: storage_pb2.GetVersionRequest) -> AsyncIterator[Version | common_pb2.FileChunk]:
        """The header, then every chunk (each of a file the header declares)."""
        declared: set[str] | None = None
        async for message in self._stream(self._stub.GetVersion, request, timeout=self._transfer_timeout):
            if message.HasField("header"):
                declared = {f.path for f in message.header.files}
                yield convert.version_from_proto(message.header)
            elif declared is None or message.chunk.path not in declared:
                raise DataLoss(f"storage sent an unexpected chunk for {message.chunk.path!r}")
            else:
                yield message.chunk

    async def watch_heads(self, prefix: str = "", *, send_initial: bool = True) -> AsyncIterator[HeadEvent]:
        """Head changes of adapters under ``prefix`` as they happen; with ``send_initial`` first the current
        head of each (``previous`` 0). Runs until closed; ``errors.Unavailable`` when storage goes away,
        ``errors.ResourceExhausted`` when this watcher fell behind (watch again)."""
        request = storage_pb2.WatchHeadsRequest(prefix=prefix, send_initial=send_initial)
        async for event in self._stream(self._stub.WatchHeads, request):
            yield convert.event_from_proto(event)


async def _sha256(data: bytes) -> str:
    # hashlib releases the GIL on large inputs: the caller's event loop keeps running meanwhile.
    return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())


class _Received:
    """One file as it arrives: each chunk checked to follow the one before and hashed on arrival, so the
    digest is ready when the last one is in. In memory, the chunks are kept as they came and joined once
    at the end (one copy, not one per chunk)."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self._hash = hashlib.sha256()
        self._size = 0

    def add(self, chunk: common_pb2.FileChunk) -> None:
        if chunk.offset != self._size:
            raise DataLoss(f"chunk of {chunk.path!r} at offset {chunk.offset}, expected {self._size}")
        piece = chunk.data
        self._keep(piece)
        self._hash.update(piece)
        self._size += len(piece)

    def _keep(self, piece: bytes) -> None:
        self._pieces.append(piece)

    def verify(self, entry: FileEntry) -> None:
        digest = self._hash.hexdigest()
        if self._size != entry.size or digest != entry.sha256:
            raise DataLoss(
                f"{entry.path!r}: got {self._size} bytes sha256 {digest[:12]}…, "
                f"expected {entry.size} bytes {entry.sha256[:12]}…"
            )

    def verified(self, entry: FileEntry) -> bytes:
        self.verify(entry)
        return self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)


class _FileSink(_Received):
    """One downloaded file: streamed into a hidden temporary file, renamed into place once verified."""

    def __init__(self, dest: Path, path: str) -> None:
        super().__init__()
        self._target = dest / Path(path).name  # the server restricts names; never follow a path out of dest
        fd, tmp = tempfile.mkstemp(prefix=f".{self._target.name}.", suffix=".part", dir=dest)
        self._tmp: Path | None = Path(tmp)
        self._handle = os.fdopen(fd, "wb")

    def _keep(self, piece: bytes) -> None:
        self._handle.write(piece)

    def verify(self, entry: FileEntry) -> None:
        self._handle.close()
        super().verify(entry)

    def publish(self) -> None:
        if self._tmp is not None:
            os.replace(self._tmp, self._target)
            self._tmp = None

    def discard(self) -> None:
        self._handle.close()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
