"""The members of a replica set as a caller sees them: a fixed list, or a DNS name re-resolved as it changes.

A spec is ``host:port[,host:port...]`` (loopback runs, fixed sets), ``srv:<name>``: the SRV records
of a Kubernetes headless Service's named port, e.g. ``srv:_grpc._tcp.claas-trainer`` (completed with the pod's
DNS search domains, so the namespace need not be spelled), or ``dns:///<name>:<port>``: the address records of
a headless Service, each with that port (members are ``ip:port``, which a pod can name itself by: its IP).
For a StatefulSet those records carry the pods' stable names (``claas-trainer-0.claas-trainer...``), so a
pod that restarts with a new IP keeps its adapters; only ready pods are published, so one that is down
leaves the set within the resolver's refresh. Members are ranked by ``services.common.rendezvous``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import dns.asyncresolver
import dns.exception
import dns.resolver
import structlog

from services.common.errors import InvalidArgument

log = structlog.get_logger("claas.peers")

SRV_PREFIX = "srv:"
DNS_PREFIX = "dns:///"

#: Resolves an SRV name to ``host:port`` members; replaceable in tests.
Resolver = Callable[[str], Awaitable[list[str]]]


async def resolve_srv(name: str) -> list[str]:
    """The ``host:port`` of every SRV record of ``name``; none when the name has no records (no ready pod)."""
    try:
        # search: a short name ("_grpc._tcp.claas-trainer") is completed with the pod's own namespace.
        answer = await dns.asyncresolver.resolve(name, "SRV", search=True)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    return [f"{record.target.to_text(omit_final_dot=True)}:{record.port}" for record in answer]


async def resolve_addresses(name_port: str) -> list[str]:
    """``ip:port`` for every A and AAAA record of ``name`` in ``name:port``; none when it has no records."""
    name, _, port = name_port.rpartition(":")
    found: list[str] = []
    for kind in ("A", "AAAA"):
        try:
            answer = await dns.asyncresolver.resolve(name, kind, search=True)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        found += [f"[{r.address}]:{port}" if ":" in r.address else f"{r.address}:{port}" for r in answer]
    return found


def parse_static(spec: str) -> tuple[str, ...]:
    """The members of a ``host:port,host:port`` list; raises InvalidArgument on a malformed one."""
    members = tuple(dict.fromkeys(part.strip() for part in spec.split(",") if part.strip()))
    for member in members:
        host, _, port = member.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgument(f"invalid peer address {member!r} in {spec!r}: expected host:port")
    if not members:
        raise InvalidArgument(f"no peer address in {spec!r}: expected host:port[,host:port...] or srv:<name>")
    return members


class PeerSet:
    """The current members of one replica set. ``start`` begins re-resolving an ``srv:`` spec every
    ``refresh_s``; a failed lookup keeps the last members (a DNS hiccup must not empty the set)."""

    def __init__(self, spec: str, *, refresh_s: float = 10.0, resolver: Resolver | None = None) -> None:
        self.spec = spec.strip()
        self._refresh_s = refresh_s
        self._task: asyncio.Task[None] | None = None
        self._name = ""
        self._resolver: Resolver = resolver or resolve_srv
        if self.spec.startswith(SRV_PREFIX):
            self._name = self.spec.removeprefix(SRV_PREFIX)
            if not self._name:
                raise InvalidArgument(f"invalid peer set {spec!r}: srv: needs a DNS name")
        elif self.spec.startswith(DNS_PREFIX):
            self._name = self.spec.removeprefix(DNS_PREFIX)
            parse_static(self._name)  # name:port
            self._resolver = resolver or resolve_addresses
        self._members: tuple[str, ...] = () if self._name else parse_static(self.spec)

    @property
    def dynamic(self) -> bool:
        return bool(self._name)

    def members(self) -> tuple[str, ...]:
        """The members as last resolved, sorted."""
        return self._members

    async def refresh(self) -> tuple[str, ...]:
        """Resolve the spec once now and return the members."""
        if not self._name:
            return self._members
        try:
            found = tuple(sorted(set(await self._resolver(self._name))))
        except (dns.exception.DNSException, OSError) as exc:
            log.warning("peer_lookup_failed", name=self._name, error=str(exc), kept=len(self._members))
            return self._members
        if found != self._members:
            log.info("peers_changed", name=self._name, members=list(found))
            self._members = found
        return self._members

    async def start(self) -> None:
        """Resolve once, then keep re-resolving in the background (a fixed list needs nothing)."""
        if not self._name or self._task is not None:
            return
        await self.refresh()
        self._task = asyncio.create_task(self._follow(), name=f"peers:{self._name}")

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            await self.refresh()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
