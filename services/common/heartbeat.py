"""Replicas of one role saying they are alive through the object store (DESIGN.md §11).

Each member rewrites ``<folder><member>.json`` every third of the lease; a member whose object the store's
listing dates older than the lease is gone, and what it held (a trainer's jobs, a storage replica's reserved
version) may be taken over by the others, each takeover settled by a conditional write. One LIST answers for
every member. The store's clock is compared with the reader's, so the lease must be well above their skew.
"""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from collections.abc import Callable

from services.common.objectstore import ObjectStore

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def member_key(member: str) -> str:
    """A replica's name as one part of an object key (``host:port`` becomes ``host-port``)."""
    return _UNSAFE.sub("-", member).lstrip(".") or "member"


def default_member(port: int) -> str:
    """A replica's name when none is set: host name and port, which a restart on the same host keeps. A port
    picked at random (0) names no stable place, so the name is random too, never shared with another process."""
    return f"{socket.gethostname()}-{port if port else uuid.uuid4().hex[:12]}"


class Heartbeats:
    """The heartbeats of one role's replicas under ``folder``, as member ``member`` writes and reads them."""

    def __init__(
        self, store: ObjectStore, folder: str, member: str, *, lease_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.folder = folder
        self.member = member_key(member)
        self.lease_s = lease_s
        self._clock = clock

    def _key(self, member: str) -> str:
        return f"{self.folder}{member}.json"

    async def beat(self) -> None:
        """Say this member is alive."""
        await self.store.put(self._key(self.member), json.dumps({"member": self.member}).encode())

    async def gone(self) -> list[str]:
        """The other members whose last beat is older than the lease, sorted."""
        stale = self._clock() - self.lease_s
        written = await self.store.list_written(self.folder)
        members = {key[len(self.folder) : -len(".json")]: at for key, at in written.items()}
        return sorted(m for m, at in members.items() if m != self.member and at < stale)

    async def alive(self, member: str) -> bool:
        """Whether ``member`` beat within the lease (this member always is)."""
        if member_key(member) == self.member:
            return True
        key = self._key(member_key(member))
        at = (await self.store.list_written(key)).get(key)
        return at is not None and at >= self._clock() - self.lease_s

    async def forget(self, member: str) -> None:
        """Drop the beat of a member that is gone and holds nothing any more."""
        await self.store.delete(self._key(member))
