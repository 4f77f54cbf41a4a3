"""Head changes fanned out to the watchers of this process: the changes made through this replica."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.common.errors import ClaasError, ResourceExhausted, Unavailable
from services.storage.domain import HeadEvent


class _Watcher:
    def __init__(self, prefix: str, size: int) -> None:
        self.prefix = prefix
        #: None in the queue ends the watch with ``self.ended``.
        self.queue: asyncio.Queue[HeadEvent | None] = asyncio.Queue(maxsize=size)
        self.ended: ClaasError | None = None

    def offer(self, event: HeadEvent) -> bool:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            return False
        return True

    def end(self, error: ClaasError) -> None:
        # What it still had queued no longer matters; this also makes room for the end marker.
        while not self.queue.empty():
            self.queue.get_nowait()
        self.ended = error
        self.queue.put_nowait(None)

    async def events(self) -> AsyncIterator[HeadEvent]:
        while True:
            event = await self.queue.get()
            if event is None:
                raise self.ended or Unavailable("watch ended")
            yield event


class HeadBroadcaster:
    """Each watcher gets a bounded queue; one that falls behind is ended (it re-watches with the initial
    heads) rather than holding memory or slowing the writers down."""

    def __init__(self, queue_size: int = 1000) -> None:
        self._size = queue_size
        self._watchers: set[_Watcher] = set()
        self._closed = False

    def publish(self, event: HeadEvent) -> None:
        for watcher in list(self._watchers):
            if event.name.startswith(watcher.prefix) and not watcher.offer(event):
                self._watchers.discard(watcher)
                watcher.end(ResourceExhausted("watcher fell behind; watch again with send_initial"))

    @asynccontextmanager
    async def subscribe(self, prefix: str) -> AsyncIterator[AsyncIterator[HeadEvent]]:
        """Events for names under ``prefix`` from now on, while the context is open."""
        if self._closed:
            raise Unavailable("storage is shutting down")
        watcher = _Watcher(prefix, self._size)
        self._watchers.add(watcher)
        try:
            yield watcher.events()
        finally:
            self._watchers.discard(watcher)

    def close(self) -> None:
        """End every watch (at shutdown, so the server need not wait out its grace period)."""
        self._closed = True
        for watcher in list(self._watchers):
            watcher.end(Unavailable("storage is shutting down; watch again"))
        self._watchers.clear()

    @property
    def watchers(self) -> int:
        return len(self._watchers)
