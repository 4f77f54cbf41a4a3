"""Keeps vLLM's loaded adapters in step with adapter heads.

Every version is loaded under its own vLLM name (``vllm_lora_name``), so a name never changes meaning
and nothing is ever reloaded in place. A request leases the name it is served by; a version that is no
longer an adapter's current one is unloaded as soon as its last lease ends, and beyond
``max_loaded`` names the least recently used idle one goes. Load and unload of one name are serialised by
a lock per name; the same path serves start-up, requests and prefetching.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog
from prometheus_client import Counter, Gauge

from services.common.errors import ClaasError
from services.common.locks import KeyedLocks
from services.common.naming import vllm_lora_name
from services.proxy.vllm import VllmClient

log = structlog.get_logger("claas.proxy.loras")

LOADS = Counter("claas_proxy_adapter_loads_total", "Adapter versions loaded into vLLM.")
UNLOADS = Counter("claas_proxy_adapter_unloads_total", "Adapter versions unloaded from vLLM.")
LOADED = Gauge("claas_proxy_adapters_loaded", "Adapter versions the proxy keeps loaded in vLLM.")

#: Writes the PEFT files of (adapter, version) into an empty folder.
Fetch = Callable[[str, int, Path], Awaitable[None]]


class Preloader(Protocol):
    """Makes an adapter version served ahead of its next call: ``LoraManager`` itself, or the router, which
    has the adapter's owner replica do it."""

    async def preload(self, adapter: str, version: int, generation: int = 1) -> None: ...


@dataclass(eq=False)
class _Entry:
    adapter: str
    served: tuple[int, int]  # (generation, version)
    name: str
    path: Path
    leases: int = 0


class LoraManager:
    """The adapter versions loaded into vLLM, one vLLM name per (adapter, version).

    ``lease`` makes a version served and holds it for one request; ``preload`` does the same with no
    request; ``forget`` and ``invalidate`` drop what storage or vLLM no longer has. A version that is no
    longer its adapter's current one is unloaded when its last lease ends; beyond ``max_loaded`` names the
    least recently used idle one goes. Files come from ``fetch`` into ``adapter_dir``, whole or not at all.
    """

    def __init__(self, vllm: VllmClient, fetch: Fetch, adapter_dir: Path, max_loaded: int) -> None:
        self._vllm = vllm
        self._fetch = fetch
        self._dir = adapter_dir
        self._max = max_loaded
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = KeyedLocks()
        # The (generation, version) each adapter serves now: an entry of another pair is stale.
        self._current: dict[str, tuple[int, int]] = {}

    def loaded(self) -> list[str]:
        """vLLM names the proxy has loaded, least recently used first."""
        return list(self._entries)

    def tracks(self, adapter: str) -> bool:
        """Whether the adapter has been served here since it was last forgotten (worth prefetching)."""
        return adapter in self._current

    @asynccontextmanager
    async def lease(
        self, adapter: str, version: int, *, generation: int = 1, current: bool = True
    ) -> AsyncIterator[str]:
        """Make vLLM serve ``adapter`` (of ``generation``) at ``version`` and hold it while the body runs.
        ``version`` is the adapter's current one unless ``current`` is False (an older version asked for by
        name, as a score may): then it is loaded for the lease only and the current one stays as it was."""
        entry = await self._acquire(adapter, version, generation, current=current)
        try:
            yield entry.name
        finally:
            entry.leases -= 1
            # A cancelled request must still release its version, or it would never be unloaded.
            await asyncio.shield(self._evict())

    async def preload(self, adapter: str, version: int, generation: int = 1) -> None:
        """Load ``version`` as the adapter's current one now, so the next request finds it ready."""
        async with self.lease(adapter, version, generation=generation):
            pass

    def tracked(self) -> list[str]:
        """The adapters whose current version this manager serves."""
        return list(self._current)

    async def forget(self, adapter: str) -> None:
        """The adapter is gone: unload every version of it that no request is using."""
        self._current.pop(adapter, None)
        await self._evict()

    def invalidate(self, name: str) -> None:
        """vLLM no longer knows ``name`` (it restarted): load it again on next use."""
        entry = self._entries.pop(name, None)
        if entry is not None:
            LOADED.set(len(self._entries))
            log.info("adapter_invalidated", vllm_name=name)

    def invalidate_all(self) -> None:
        for name in list(self._entries):
            self.invalidate(name)

    async def _acquire(self, adapter: str, version: int, generation: int, *, current: bool = True) -> _Entry:
        name = vllm_lora_name(adapter, version, generation)
        async with self._lock(name):
            entry = self._entries.get(name)
            if entry is None:
                entry = await self._load(adapter, (generation, version), name)
                self._entries[name] = entry
                LOADED.set(len(self._entries))
            # No await between here and the caller's use: eviction cannot slip in before the lease counts.
            entry.leases += 1
            self._entries.move_to_end(name)
        if current:
            self._current[adapter] = (generation, version)
        await self._evict()
        return entry

    async def _load(self, adapter: str, served: tuple[int, int], name: str) -> _Entry:
        path = self._dir / name
        if not path.is_dir():
            await self._download(adapter, served[1], path)
        await self._vllm.load_lora(name, str(path))
        LOADS.inc()
        log.info("adapter_loaded", adapter=adapter, version=served[1], vllm_name=name)
        return _Entry(adapter, served, name, path)

    async def _download(self, adapter: str, version: int, path: Path) -> None:
        # Into a private folder first, renamed into place whole: vLLM never sees a half-written adapter.
        self._dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=self._dir))
        try:
            await self._fetch(adapter, version, tmp)
            tmp.chmod(0o755)  # vLLM may run as another user on a shared volume
            tmp.rename(path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _doomed(self) -> list[_Entry]:
        idle = [e for e in self._entries.values() if e.leases == 0]
        stale = [e for e in idle if self._current.get(e.adapter) != e.served]
        keep = [e for e in idle if e not in stale]
        excess = len(self._entries) - len(stale) - self._max
        return stale + keep[: max(excess, 0)]

    async def _evict(self) -> None:
        for entry in self._doomed():
            await self._unload(entry)

    async def _unload(self, entry: _Entry) -> None:
        async with self._lock(entry.name):
            if self._entries.get(entry.name) is not entry or entry.leases:
                return  # taken again meanwhile, or already gone
            del self._entries[entry.name]
            LOADED.set(len(self._entries))
            try:
                await self._vllm.unload_lora(entry.name)
            except ClaasError as exc:
                # vLLM down: it forgets every adapter when it comes back anyway.
                log.warning("adapter_unload_failed", vllm_name=entry.name, error=exc.message)
            UNLOADS.inc()
            with suppress(OSError):
                shutil.rmtree(entry.path)
            log.info("adapter_unloaded", adapter=entry.adapter, version=entry.served[1], vllm_name=entry.name)
