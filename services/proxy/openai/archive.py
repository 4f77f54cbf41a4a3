"""A version's files as a zip archive built while its chunks arrive: memory holds a chunk, not the version."""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import AsyncIterator
from datetime import datetime

from services.storage.domain import Chunk, FileEntry

#: Beyond this a member needs the zip64 extension (zipfile decides it when the member is opened).
_ZIP32_LIMIT = (1 << 31) - 1


class _Pipe:
    """A write-only, unseekable file: zipfile then writes local headers with data descriptors, and what it
    wrote is taken out after each chunk."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        """Nothing is buffered here: zipfile calls it before closing."""

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


async def zip_stream(
    files: tuple[FileEntry, ...], chunks: AsyncIterator[Chunk], when: datetime
) -> AsyncIterator[bytes]:
    """The bytes of a stored (uncompressed) archive of ``files``, whose chunks come in their order."""
    pipe = _Pipe()
    stamp = (max(when.year, 1980), when.month, when.day, when.hour, when.minute, when.second)
    async with contextlib.aclosing(chunks):
        with zipfile.ZipFile(pipe, "w", zipfile.ZIP_STORED) as archive:  # type: ignore[arg-type]
            chunk = await anext(chunks, None)
            for entry in files:
                member = zipfile.ZipInfo(entry.path, date_time=stamp)
                member.file_size = entry.size
                with archive.open(member, "w", force_zip64=entry.size > _ZIP32_LIMIT) as out:
                    while chunk is not None and chunk.path == entry.path:
                        out.write(chunk.data)
                        yield pipe.take()
                        chunk = await anext(chunks, None)
                yield pipe.take()
    yield pipe.take()
