"""Head changes fanned out to the watchers of this process: those made through this replica at once, those
made through the others as the head feed in the object store brings them."""

from __future__ import annotations

import asyncio
import collections
import itertools
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import structlog

from services.common.errors import ClaasError, ResourceExhausted, Unavailable
from services.common.objectstore import ObjectStore
from services.storage.domain import HeadEvent

log = structlog.get_logger("claas.storage.watch")


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


#: Where the head changes of every replica are announced, one empty object each.
EVENTS = "head-events/"
_ANNOUNCEMENT = re.compile(r"head-events/(\d{13})-\d+-([^/]+)/([^/]+/[^/]+)/(\d+)-(\d+)-([hd])")


class HeadFeed:
    """Head changes through the object store, so that a watcher of any replica sees those made through any.

    Each change is announced as an empty object, ``head-events/<ms>-<seq>-<replica>/<tenant>/<adapter>/
    <generation>-<previous>-<h|d>``; every ``poll_s`` each replica lists the announcements of the last
    ``window_s`` (one LIST page per 1,000), reads the record of each one it has not seen and another replica
    made, and hands the adapter's current head to its own watchers. Reading the record rather than trusting
    the announcement keeps two replicas' changes in the right order whatever their clocks. The window must
    exceed the replicas' clock skew; each replica deletes its own announcements once older than it.
    """

    def __init__(
        self,
        store: ObjectStore,
        replica: str,
        heads: HeadBroadcaster,
        read_head: Callable[[str], Awaitable[tuple[int, int] | None]],
        *,
        poll_s: float = 1.0,
        window_s: float = 10.0,
    ) -> None:
        self._store = store
        self._replica = replica
        self._heads = heads
        self._read_head = read_head
        self._poll_s = poll_s
        self._window_ms = int(window_s * 1000)
        self._seq = itertools.count()
        self._seen: dict[str, int] = {}
        self._mine: collections.deque[tuple[int, str]] = collections.deque()

    async def announce(self, event: HeadEvent) -> None:
        """Tell the other replicas of a head change this one made (its own watchers have it already)."""
        ms = int(time.time() * 1000)
        stamp = f"{ms:013d}-{next(self._seq):06d}-{self._replica}"
        change = f"{event.generation}-{event.previous}-{'d' if event.deleted else 'h'}"
        key = f"{EVENTS}{stamp}/{event.name}/{change}"
        await self._store.put(key, b"")
        self._mine.append((ms, key))

    async def follow(self) -> None:
        """Poll for the other replicas' changes until cancelled."""
        while True:
            try:
                await self.poll()
            except (ClaasError, OSError) as exc:
                log.warning("head_feed_poll_failed", error=str(exc))
            await asyncio.sleep(self._poll_s)  # a polling period, not a synchronisation

    async def poll(self) -> int:
        """Hand on the changes announced since the last poll; how many."""
        since = int(time.time() * 1000) - self._window_ms
        self._seen = {key: ms for key, ms in self._seen.items() if ms >= since}
        while self._mine and self._mine[0][0] < since:
            await self._store.delete(self._mine.popleft()[1])
        handed = 0
        for key in await self._store.list(EVENTS, after=f"{EVENTS}{since:013d}"):
            parsed = _parse(key)
            if parsed is None or key in self._seen:
                continue
            ms, replica, name, generation, previous, deleted = parsed
            self._seen[key] = ms
            if replica == self._replica:
                continue
            current = None if deleted else await self._read_head(name)
            if current is None:
                self._heads.publish(HeadEvent(name, 0, previous, deleted=True, generation=generation))
            else:
                self._heads.publish(HeadEvent(name, current[0], previous, generation=current[1]))
            handed += 1
        return handed

    async def sweep(self) -> None:
        """Delete announcements older than the window that a replica which stopped left behind."""
        since = int(time.time() * 1000) - self._window_ms
        for key in await self._store.list(EVENTS):
            parsed = _parse(key)
            if parsed is None or parsed[0] < since:
                await self._store.delete(key)


def _parse(key: str) -> tuple[int, str, str, int, int, bool] | None:
    """``(ms, replica, name, generation, previous, deleted)`` of an announcement; None for another key."""
    match = _ANNOUNCEMENT.fullmatch(key)
    if match is None:
        return None
    ms, replica, name, generation, previous, kind = match.groups()
    return int(ms), replica, name, int(generation), int(previous), kind == "d"
