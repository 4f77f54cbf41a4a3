"""Which proxy replica serves a call: the one whose vLLM holds the adapter (DESIGN.md §11).

Each adapter has an owner among the proxy replicas by rendezvous hashing, so every replica agrees on it with
no coordination. A chat, text completion, score or preload of an adapter another replica owns is forwarded
once to that owner, which serves it from its own vLLM and records the rollout; a forwarded call is always
served where it arrives, never forwarded again. The load is bounded: an owner with ``spill_in_flight`` calls
of the adapter in flight refuses the forward (``Busy``), or, when the call landed on it, hands it on, and the
call goes to the next replica in the adapter's order. An owner that cannot be reached is skipped and the call
served here (availability first). Base-model calls are served where they land. Ownership only decides where
an adapter is loaded: no write depends on it, so two replicas that briefly disagree cost one extra load.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import AsyncIterator
from typing import Protocol

import structlog
from prometheus_client import Counter

from services.common.errors import ClaasError, Unavailable
from services.common.naming import owner_of
from services.common.peers import PeerSet
from services.common.rendezvous import ranked
from services.proxy.domain import (
    Busy,
    ChatRequest,
    ChatResult,
    CompletionRequest,
    PeerCall,
    PeerEvent,
    Preload,
    Preloaded,
    ScoreRequest,
    ScoreResult,
)
from services.proxy.inference import Inference, StreamEvent
from services.proxy.loras import LoraManager
from services.proxy.scoring import Scoring
from services.proxy.tenancy import not_found, owns, qualify

log = structlog.get_logger("claas.proxy.routing")


FORWARDED = Counter(
    "claas_proxy_forwarded_total",
    "Calls this replica sent to another one, by outcome: served (by the owner), spilled (the owner was busy, "
    "so the next replica served it), unreachable (served here instead).",
    ["outcome"],
)
PEER_CALLS = Counter(
    "claas_proxy_peer_calls_total",
    "Calls other replicas forwarded to this one, by outcome: served, or busy (refused at the in-flight limit).",
    ["outcome"],
)


class Peers(Protocol):
    """The other replicas' forwarding endpoint (``services.proxy.client.PeerClient``)."""

    def serve(
        self, peer: str, tenant: str, call: PeerCall, *, stream: bool, may_refuse: bool
    ) -> AsyncIterator[PeerEvent]: ...

    def keep(self, members: tuple[str, ...]) -> None:
        """Let go of the connections to replicas that are no longer ``members``."""
        ...


class Router:
    """The calls both transports make (chat, completion, score; plain or streamed) and the preloads of
    feedback and rollback, each served here or forwarded once to the adapter's owner replica; and
    ``serve_forwarded`` for what other replicas send. Without a replica set everything is served here."""

    def __init__(
        self,
        *,
        inference: Inference,
        scoring: Scoring,
        loras: LoraManager,
        base_model: str,
        replicas: PeerSet | None = None,
        self_addr: str = "",
        peers: Peers | None = None,
        spill_in_flight: int = 16,
    ) -> None:
        self._inference = inference
        self._scoring = scoring
        self._loras = loras
        self._base = base_model
        self._replicas = replicas if peers is not None else None
        self._self = self_addr
        self._peers = peers
        self._spill = spill_in_flight
        self._in_flight: Tally[str] = Tally()
        self._members: tuple[str, ...] = ()

    async def start(self) -> None:
        if self._replicas is not None:
            await self._replicas.start()

    async def stop(self) -> None:
        if self._replicas is not None:
            await self._replicas.stop()

    def owns(self, adapter: str) -> bool:
        """Is this replica the one that serves ``adapter`` (always, without a replica set)?"""
        order = self._order(adapter)
        return not order or order[0] == self._self

    async def chat(self, tenant: str, request: ChatRequest) -> ChatResult:
        return await self._one(tenant, request)  # type: ignore[return-value]

    def chat_stream(self, tenant: str, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """The events of ``Inference.chat_stream``, from whichever replica serves the call."""
        return self._route(tenant, request, stream=True)  # type: ignore[return-value]

    async def complete(self, tenant: str, request: CompletionRequest) -> ChatResult:
        return await self._one(tenant, request)  # type: ignore[return-value]

    def complete_stream(self, tenant: str, request: CompletionRequest) -> AsyncIterator[StreamEvent]:
        return self._route(tenant, request, stream=True)  # type: ignore[return-value]

    async def score(self, tenant: str, request: ScoreRequest) -> ScoreResult:
        return await self._one(tenant, request)  # type: ignore[return-value]

    async def preload(self, adapter: str, version: int, generation: int = 1) -> None:
        """Load ``adapter`` at ``version`` into its owner's vLLM (this one's when it owns it or the owner is
        unreachable)."""
        await self._one(owner_of(adapter), Preload(adapter, version, generation))

    async def serve_forwarded(
        self, tenant: str, call: PeerCall, *, stream: bool, may_refuse: bool
    ) -> AsyncIterator[PeerEvent]:
        """A call another replica forwarded: served here, or refused with ``Busy`` when it may be and this
        replica's calls of the adapter in flight are at the limit."""
        if isinstance(call, Preload) and not owns(tenant, call.adapter):
            raise not_found(call.adapter)
        adapter = self._adapter(tenant, call)
        if may_refuse and adapter and self._in_flight[adapter] >= self._spill:
            PEER_CALLS.labels("busy").inc()
            yield Busy(self._in_flight[adapter])
            return
        PEER_CALLS.labels("served").inc()
        async for event in self._local(tenant, call, adapter, stream=stream):
            yield event

    async def _one(self, tenant: str, call: PeerCall) -> PeerEvent:
        events = self._route(tenant, call, stream=False)
        try:
            async for event in events:
                last = event
        finally:
            await events.aclose()
        return last

    async def _route(self, tenant: str, call: PeerCall, *, stream: bool) -> AsyncIterator[PeerEvent]:
        adapter = self._adapter(tenant, call)
        for peer, may_refuse in self._targets(adapter, call):
            events = self._peers.serve(peer, tenant, call, stream=stream, may_refuse=may_refuse)  # type: ignore[union-attr]
            try:
                try:
                    first = await anext(events)
                except Unavailable as exc:
                    # Nothing was answered yet, so serving here cannot answer twice.
                    FORWARDED.labels("unreachable").inc()
                    log.warning("peer_unreachable", peer=peer, adapter=adapter, error=exc.message)
                    break
                if isinstance(first, Busy):
                    log.info("peer_busy", peer=peer, adapter=adapter, in_flight=first.in_flight)
                    continue
                FORWARDED.labels("served" if may_refuse else "spilled").inc()
                yield first
                async for event in events:
                    yield event
                return
            finally:
                await events.aclose()
        async for event in self._local(tenant, call, adapter, stream=stream):
            yield event

    def _targets(self, adapter: str, call: PeerCall) -> list[tuple[str, bool]]:
        """The replicas to try before serving here, each with whether it may refuse."""
        order = self._order(adapter)
        if not order:
            return []
        if order[0] == self._self:
            if isinstance(call, Preload) or self._in_flight[adapter] < self._spill or len(order) < 2:
                return []
            return [(order[1], False)]  # this owner is busy: the next one serves
        if isinstance(call, Preload):
            return [(order[0], False)]
        targets = [(order[0], True)]
        if len(order) > 1 and order[1] != self._self:
            targets.append((order[1], False))
        return targets

    def _order(self, adapter: str) -> list[str]:
        if not adapter or self._replicas is None:
            return []
        members = self._replicas.members()
        if members != self._members:
            self._members = members
            self._peers.keep(members)  # type: ignore[union-attr]
        return ranked(adapter, members)

    def _adapter(self, tenant: str, call: PeerCall) -> str:
        """The full name of the adapter a call uses; empty for the base model or a name the caller cannot
        use (served here, where it gets its error)."""
        if isinstance(call, Preload):
            return call.adapter
        if call.model == self._base:
            return ""
        try:
            return qualify(tenant, call.model)
        except ClaasError:
            return ""

    async def _local(self, tenant: str, call: PeerCall, adapter: str, *, stream: bool) -> AsyncIterator[PeerEvent]:
        self._in_flight[adapter] += 1
        try:
            if isinstance(call, Preload):
                await self._loras.preload(call.adapter, call.version, call.generation)
                yield Preloaded()
            elif isinstance(call, ScoreRequest):
                yield await self._scoring.score(tenant, call)
            elif stream:
                events = self._stream_here(tenant, call)
                try:
                    async for event in events:
                        yield event
                finally:
                    await events.aclose()
            elif isinstance(call, ChatRequest):
                yield await self._inference.chat(tenant, call)
            else:
                yield await self._inference.complete(tenant, call)
        finally:
            self._in_flight[adapter] -= 1
            if not self._in_flight[adapter]:
                del self._in_flight[adapter]

    def _stream_here(self, tenant: str, call: ChatRequest | CompletionRequest) -> AsyncIterator[StreamEvent]:
        if isinstance(call, ChatRequest):
            return self._inference.chat_stream(tenant, call)
        return self._inference.complete_stream(tenant, call)
