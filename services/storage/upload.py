"""Receiving a version upload: check the header, take the chunks into a private spool, verify every file.

Nothing reaches the object store from here; the core writes a version only after ``receive`` returned,
so a bad or broken upload leaves no trace.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from services.common.errors import DataLoss, InvalidArgument, ResourceExhausted
from services.common.naming import check_version
from services.storage import metrics
from services.storage.domain import Chunk, FileEntry, UploadHeader
from services.storage.layout import (
    CHUNK_BYTES,
    MAX_FILES,
    MAX_LINEAGE_BYTES,
    check_file_name,
    check_name,
    check_sha256,
    check_text,
)


@dataclass(frozen=True)
class SpoolLimits:
    #: Largest sum of the declared file sizes of one version.
    max_version_bytes: int
    #: A file larger than this is spooled to disk instead of memory.
    memory_bytes: int
    #: Folder of the on-disk spool (None: the system's temporary folder).
    folder: Path | None = None


def check_header(header: UploadHeader, limits: SpoolLimits) -> UploadHeader:
    check_name(header.name)
    check_version(header.parent_version, field="parent_version")
    check_text(header.lineage.job_id, "lineage.job_id")
    lineage_bytes = len(json.dumps(header.lineage.to_json()))
    if lineage_bytes > MAX_LINEAGE_BYTES:
        raise ResourceExhausted(
            f"lineage of {lineage_bytes} bytes exceeds the limit of {MAX_LINEAGE_BYTES} bytes", param="lineage"
        )
    if not 1 <= len(header.files) <= MAX_FILES:
        raise InvalidArgument(f"a version holds 1 to {MAX_FILES} files, got {len(header.files)}")
    seen: set[str] = set()
    for entry in header.files:
        check_file_name(entry.path)
        check_sha256(entry.path, entry.sha256)
        if entry.path.lower() in seen:  # "A.bin" and "a.bin" are one file on a case-insensitive disk
            raise InvalidArgument(f"file {entry.path!r} declared twice (names are compared without case)")
        if entry.size < 0:
            raise InvalidArgument(f"file {entry.path!r}: size must be >= 0, got {entry.size}")
        seen.add(entry.path.lower())
    total = sum(f.size for f in header.files)
    if total > limits.max_version_bytes:
        raise ResourceExhausted(f"version of {total} bytes exceeds the limit of {limits.max_version_bytes} bytes")
    return header


class _File:
    def __init__(self, entry: FileEntry, limits: SpoolLimits) -> None:
        self.entry = entry
        self.size = 0
        self._hash = hashlib.sha256()
        # Lives until the commit is written; Spool.close() closes it.
        self._data = tempfile.SpooledTemporaryFile(max_size=limits.memory_bytes, dir=limits.folder)  # noqa: SIM115

    def add(self, chunk: Chunk) -> None:
        if chunk.offset != self.size:
            raise InvalidArgument(f"chunk of {chunk.path!r} at offset {chunk.offset}, expected {self.size}")
        if not chunk.data:
            # An empty chunk carries nothing; an unbounded stream of them would hold the call open forever.
            raise InvalidArgument(f"empty chunk of {chunk.path!r}: every chunk carries at least one byte")
        if self.size + len(chunk.data) > self.entry.size:
            # The sender's mistake, found before anything was stored: not a loss of stored data.
            raise InvalidArgument(f"file {chunk.path!r} is longer than its declared {self.entry.size} bytes")
        self._data.write(chunk.data)
        self._hash.update(chunk.data)
        self.size += len(chunk.data)

    def verify(self) -> None:
        digest = self._hash.hexdigest()
        if self.size != self.entry.size or digest != self.entry.sha256:
            raise DataLoss(
                f"file {self.entry.path!r}: received {self.size} bytes with sha256 {digest}, "
                f"declared {self.entry.size} bytes with sha256 {self.entry.sha256}"
            )

    def open(self) -> BinaryIO:
        """The received bytes, from the start (one reader at a time)."""
        self._data.seek(0)
        return self._data

    def close(self) -> None:
        self._data.close()


class Spool:
    """The verified files of one upload, until the core has written them. Close it when done."""

    def __init__(self, header: UploadHeader, limits: SpoolLimits) -> None:
        self.header = header
        self._files = {f.path: _File(f, limits) for f in header.files}

    def add(self, chunk: Chunk) -> None:
        target = self._files.get(chunk.path)
        if target is None:
            raise InvalidArgument(f"chunk for undeclared file {chunk.path!r}")
        if len(chunk.data) > CHUNK_BYTES:
            raise ResourceExhausted(
                f"chunk of {chunk.path!r} is {len(chunk.data)} bytes; the limit is {CHUNK_BYTES} bytes"
            )
        target.add(chunk)

    def verify(self) -> None:
        for file in self._files.values():
            file.verify()

    def open(self, path: str) -> BinaryIO:
        return self._files[path].open()

    def close(self) -> None:
        for file in self._files.values():
            file.close()


async def receive(header: UploadHeader, chunks: AsyncIterator[UploadHeader | Chunk], limits: SpoolLimits) -> Spool:
    """Take every chunk after ``header`` into a spool and verify sizes and SHA-256 of every file."""
    spool = Spool(header, limits)
    try:
        async for item in chunks:
            if not isinstance(item, Chunk):
                raise InvalidArgument("only one header per upload, before every chunk")
            spool.add(item)
            metrics.BYTES_RECEIVED.inc(len(item.data))
        spool.verify()
    except BaseException:
        spool.close()
        raise
    return spool
