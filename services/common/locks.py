"""Per-key asyncio locks that are forgotten when nobody holds or waits for them.

A map of one lock per adapter (or per vLLM name) that only grows is memory a tenant can grow at will, by
naming adapters that do not exist. Here a key's lock lives only while some task holds it or waits for it.
These locks order the work of one process; they are never what makes a write correct across replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class _Entry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class KeyedLocks:
    """``async with locks(key):`` serialises the holders of one key; idle keys take no memory."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    @contextlib.asynccontextmanager
    async def __call__(self, key: str) -> AsyncIterator[None]:
        entry = self._entries.setdefault(key, _Entry())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]

    def __len__(self) -> int:
        """Keys held or waited for now."""
        return len(self._entries)
