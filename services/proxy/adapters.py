"""The public face of storage, scoped to the caller's tenant: create, list, inspect, roll back, delete,
export. A name of another tenant is answered like a missing one."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import shutil
import tempfile
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

import structlog

from services.common.domain import EXPORTED_FILES, LoraSpec
from services.common.errors import ClaasError, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from services.common.naming import check_version
from services.proxy.audit import AuditLog
from services.proxy.loras import LoraManager, Preloader
from services.proxy.tenancy import not_found, qualify
from services.storage.domain import Adapter, Chunk, FileEntry, Version
from services.storage.layout import SEND_CHUNK_BYTES

log = structlog.get_logger("claas.proxy.adapters")
_INT32_MAX = 2**31 - 1


class AdapterSource(Protocol):
    """Where adapters and their versions live (storage)."""

    async def get_adapter(self, name: str) -> Adapter: ...

    async def list_adapters(self, prefix: str = "") -> list[Adapter]: ...

    async def versions_page(
        self, name: str, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Version], str]: ...

    async def set_head(self, name: str, expected: int, version: int) -> Adapter: ...

    async def delete_adapter(self, name: str) -> bool: ...

    async def download_version(self, name: str, version: int, dest: Path) -> Version: ...


class AdapterFactory(Protocol):
    """Who makes an adapter's version 1 (the trainer: it knows the base model's modules)."""

    async def init_adapter(self, name: str, lora: LoraSpec) -> Adapter: ...


class Adapters:
    """The caller's adapters: every name is qualified with the caller's tenant before storage sees it."""

    def __init__(
        self,
        *,
        storage: AdapterSource,
        trainer: AdapterFactory,
        loras: LoraManager,
        serving: Preloader,
        audit: AuditLog,
        max_per_tenant: int = 0,
        max_exports: int = 8,
    ) -> None:
        self._storage = storage
        self._trainer = trainer
        self._loras = loras
        self._serving = serving
        self._audit = audit
        self._max_per_tenant = max_per_tenant
        # Exports staged on this proxy's disk now, in all and by tenant: each holds a whole version there.
        self._max_exports = max_exports
        self._exports: collections.Counter[str] = collections.Counter()

    async def create(self, tenant: str, name: str, lora: LoraSpec | None = None) -> Adapter:
        """A new adapter at version 1, which answers exactly like the base model."""
        owner, slash, _ = name.strip().partition("/")
        if slash and owner != tenant:
            raise PermissionDenied("adapters can only be created in your own tenant", param="name")
        full = qualify(tenant, name)
        # Counted before the create: two creates racing on two replicas may pass the bound by one each; the
        # quota bounds what a tenant can hold, it is not a lock.
        if self._max_per_tenant and len(await self.list(tenant)) >= self._max_per_tenant:
            raise ResourceExhausted(
                f"tenant {tenant!r} has {self._max_per_tenant} adapters, its quota (CLAAS_MAX_ADAPTERS_PER_TENANT); "
                "delete one first"
            )
        adapter = await self._trainer.init_adapter(full, lora or LoraSpec())
        log.info("adapter_created", adapter=full, version=adapter.head_version)
        return adapter

    async def list(self, tenant: str) -> list[Adapter]:
        return await self._storage.list_adapters(prefix=f"{tenant}/")

    async def get(self, tenant: str, name: str) -> Adapter:
        full = qualify(tenant, name)
        try:
            return await self._storage.get_adapter(full)
        except NotFound:
            raise not_found(name) from None

    async def versions(
        self, tenant: str, name: str, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Version], str]:
        """A page of the adapter's committed versions, oldest first, and the next page's token."""
        if not 0 <= page_size <= _INT32_MAX:  # storage caps a page at its own bound
            raise InvalidArgument(f"page_size must be in 0..{_INT32_MAX}, got {page_size}", param="page_size")
        adapter = await self.get(tenant, name)
        return await self._storage.versions_page(adapter.name, page_size=page_size, page_token=page_token)

    async def rollback(self, tenant: str, name: str, version: int) -> Adapter:
        """Point the head at an earlier (or any committed) version; the next chat is served by it."""
        check_version(version, allow_zero=False)
        adapter = await self.get(tenant, name)
        if adapter.head_version != version:
            adapter = await self._storage.set_head(adapter.name, adapter.head_version, version)
            log.info("adapter_rolled_back", adapter=adapter.name, version=version)
        try:
            await self._serving.preload(adapter.name, adapter.head_version, adapter.generation)
        except ClaasError as exc:
            log.warning("preload_failed", adapter=adapter.name, error=exc.message)
        return adapter

    async def delete(self, tenant: str, name: str) -> bool:
        full = qualify(tenant, name)
        deleted = await self._storage.delete_adapter(full)
        await self._loras.forget(full)
        await self._audit.delete_adapter(tenant, full)
        log.info("adapter_deleted", adapter=full, deleted=deleted)
        return deleted

    async def export(self, tenant: str, name: str, version: int = 0) -> tuple[Version, AsyncIterator[Chunk]]:
        """The version's PEFT files (0 = head), never its optimizer state, as a header and the files' chunks.

        The version is first downloaded (and verified) into a temporary folder, so every error comes before
        the first byte, and storage is not held by a caller that reads slowly; the chunks are then read
        from disk, a chunk at a time. The folder goes when the chunks are read or dropped."""
        check_version(version, zero="the head")
        adapter = await self.get(tenant, name)
        self._take_export_slot(tenant)
        staged = _Staged(Path(tempfile.mkdtemp(prefix="claas-export-")), lambda: self._give_back_export_slot(tenant))
        try:
            header = await self._storage.download_version(adapter.name, version, staged.path)
        except BaseException:
            staged.remove()
            raise
        kept = tuple(entry for entry in header.files if entry.path in EXPORTED_FILES)
        return dataclasses.replace(header, files=kept), _read_chunks(staged, kept)

    def _take_export_slot(self, tenant: str) -> None:
        per_tenant = max(1, self._max_exports // 4)
        if self._exports.total() >= self._max_exports or self._exports[tenant] >= per_tenant:
            raise ResourceExhausted(
                f"too many exports at once (this proxy stages {self._max_exports}, {per_tenant} per tenant: "
                "CLAAS_MAX_PARALLEL_EXPORTS); retry when one has finished"
            )
        self._exports[tenant] += 1

    def _give_back_export_slot(self, tenant: str) -> None:
        self._exports[tenant] -= 1
        if self._exports[tenant] <= 0:
            del self._exports[tenant]


class _Staged:
    """An export's folder on this proxy's disk. Removed, and its slot given back, exactly once: when its
    chunks are read or closed, or when they are dropped unread (a client gone before its body started)."""

    def __init__(self, path: Path, give_back: Callable[[], None]) -> None:
        self.path = path
        self.remove = weakref.finalize(self, _remove, path, give_back)


def _remove(path: Path, give_back: Callable[[], None]) -> None:
    shutil.rmtree(path, ignore_errors=True)
    give_back()


async def _read_chunks(staged: _Staged, files: tuple[FileEntry, ...]) -> AsyncIterator[Chunk]:
    try:
        for entry in files:
            with (staged.path / entry.path).open("rb") as handle:
                offset = 0
                while piece := await asyncio.to_thread(handle.read, SEND_CHUNK_BYTES):
                    yield Chunk(entry.path, offset, piece)
                    offset += len(piece)
    finally:
        staged.remove()
