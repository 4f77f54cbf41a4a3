"""Adapter versions for the ``self`` and ``trust_region`` teachers: which version the head is, and its
files (PEFT layout) fetched from storage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from services.common.errors import FailedPrecondition
from services.storage.domain import Adapter, Version
from services.teacher.domain import AdapterRef


class AdapterSource(Protocol):
    """The part of ``services.storage.client.StorageClient`` the teacher uses."""

    async def get_adapter(self, name: str) -> Adapter: ...

    async def download_version(
        self, name: str, version: int, dest: Path, *, include_optimizer: bool = False
    ) -> Version: ...

    async def close(self) -> None: ...


class AdapterFiles:
    """Connects to storage on first use, inside the running event loop, and only if adapters are asked for."""

    def __init__(self, connect: Callable[[], AdapterSource]) -> None:
        self._connect = connect
        self._source: AdapterSource | None = None

    def _storage(self) -> AdapterSource:
        if self._source is None:
            self._source = self._connect()
        return self._source

    async def resolve(self, ref: AdapterRef) -> AdapterRef:
        # Asked even for a given version: the generation keeps a cached slot of a deleted adapter from being
        # taken for the new adapter of the same name.
        adapter = await self._storage().get_adapter(ref.name)
        version = ref.version or adapter.head_version
        if version < 1:
            raise FailedPrecondition(f"adapter {ref.name} has no version yet; initialise it first")
        return AdapterRef(ref.name, version, adapter.generation)

    async def download(self, ref: AdapterRef, dest: Path) -> Path:
        """Write the files of ``ref`` (version resolved) into ``dest`` and return it."""
        await self._storage().download_version(ref.name, ref.version, dest)
        return dest

    async def close(self) -> None:
        if self._source is not None:
            await self._source.close()
