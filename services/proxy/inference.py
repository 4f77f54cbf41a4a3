"""Chat and text completions: resolve the model to an adapter head, make vLLM serve it, forward, record
the rollout.

The rollout (exact prompt and response token ids, sampled logprobs) is written before the answer is
returned, and for a stream before its final event, so feedback can always find it. A text completion has no
conversation, yet the teacher scores the answer under one: its rollout's ``messages`` are the prompt as one
user message (its ``prompt_ids`` stay exactly the raw prompt's tokens that vLLM saw, which the student trains
on).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol, TypeVar

import structlog
from prometheus_client import Histogram

from services.common.domain import Message
from services.common.errors import ClaasError, FailedPrecondition, NotFound
from services.proxy.answers import CHAT, TEXT, Collected, Endpoint, chat_payload, text_payload
from services.proxy.domain import ChatRequest, ChatResult, CompletionRequest, Delta, Sampling, Started
from services.proxy.gate import EngineGate
from services.proxy.limits import ChatLimits
from services.proxy.loras import LoraManager
from services.proxy.rollouts import Rollout, RolloutStore, new_completion_id, utcnow
from services.proxy.tenancy import not_found, qualify
from services.proxy.thinking import ThinkingFilter, strip_thinking
from services.proxy.vllm import VllmClient
from services.storage.domain import Adapter

log = structlog.get_logger("claas.proxy.inference")

CHAT_SECONDS = Histogram("claas_proxy_chat_seconds", "Chat latency through the proxy.", ["stream", "adapter"])
COMPLETION_SECONDS = Histogram(
    "claas_proxy_completion_seconds", "Text completion latency through the proxy.", ["stream", "adapter"]
)

T = TypeVar("T")
StreamEvent = Started | Delta | ChatResult


class AdapterReader(Protocol):
    """Where an adapter's head is looked up (storage)."""

    async def get_adapter(self, name: str) -> Adapter: ...


@dataclass(frozen=True)
class Target:
    """What answers: the base model, or an adapter at one version."""

    model: str
    adapter: str = ""
    version: int = 0
    generation: int = 1


@dataclass(frozen=True)
class _Call:
    """One generation request, whatever its endpoint: what to send, and what the rollout records."""

    endpoint: Endpoint
    model: str
    #: vLLM's request without ``model`` (the served name is known only once the version is leased).
    payload: dict[str, Any]
    messages: tuple[Message, ...]
    sampling: Sampling
    seconds: Histogram
    strip_thinking: bool = False
    want_logprobs: bool = False


class Inference:
    """Chat or complete text with the base model or one of the caller's adapters, plain or streamed;
    every answer is recorded as a rollout before it is returned."""

    def __init__(
        self,
        *,
        storage: AdapterReader,
        loras: LoraManager,
        vllm: VllmClient,
        rollouts: RolloutStore,
        limits: ChatLimits,
        base_model: str,
        gate: EngineGate | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._storage = storage
        self._loras = loras
        self._vllm = vllm
        self._rollouts = rollouts
        self._limits = limits
        self._base = base_model
        self._gate = gate or EngineGate()
        self._clock = clock

    async def chat(self, tenant: str, request: ChatRequest) -> ChatResult:
        return await self._answer(tenant, self._chat_call(request))

    def chat_stream(self, tenant: str, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """``Started`` once vLLM accepted the request, then ``Delta``s, then the ``ChatResult`` (whose text
        is the whole answer). Closing the iterator early cancels the request in vLLM."""
        return self._answer_stream(tenant, self._chat_call(request, stream=True))

    async def complete(self, tenant: str, request: CompletionRequest) -> ChatResult:
        """A text completion of ``request.prompt`` (no chat template), recorded like a chat."""
        return await self._answer(tenant, self._text_call(request))

    def complete_stream(self, tenant: str, request: CompletionRequest) -> AsyncIterator[StreamEvent]:
        """A streamed text completion: the events of ``chat_stream``."""
        return self._answer_stream(tenant, self._text_call(request, stream=True))

    def _chat_call(self, request: ChatRequest, *, stream: bool = False) -> _Call:
        sampling = self._limits.check(request)
        return _Call(
            endpoint=CHAT,
            model=request.model,
            payload=chat_payload(request, sampling, stream=stream),
            messages=request.messages,
            sampling=sampling,
            seconds=CHAT_SECONDS,
            strip_thinking=request.strip_thinking,
            want_logprobs=request.top_logprobs is not None,
        )

    def _text_call(self, request: CompletionRequest, *, stream: bool = False) -> _Call:
        sampling = self._limits.check_completion(request)
        return _Call(
            endpoint=TEXT,
            model=request.model,
            payload=text_payload(request, sampling, stream=stream),
            messages=(Message("user", request.prompt),),
            sampling=sampling,
            seconds=COMPLETION_SECONDS,
            want_logprobs=request.logprobs is not None,
        )

    async def _answer(self, tenant: str, call: _Call) -> ChatResult:
        started = time.perf_counter()
        target = await self.resolve(tenant, call.model)
        now = self._clock()
        async with AsyncExitStack() as stack:
            body = await self._start(
                stack, target, lambda m: self._vllm.post(call.endpoint.path, {**call.payload, "model": m})
            )
        choices = body.get("choices") or [{}]
        collected = Collected(prompt_ids=call.endpoint.prompt_ids(body))
        collected.add_choice(call.endpoint, choices[0])
        result = await self._record(tenant, target, call, collected, now)
        raw = result.text
        call.seconds.labels("false", str(bool(target.adapter)).lower()).observe(time.perf_counter() - started)
        return replace(
            result,
            text=strip_thinking(raw) if call.strip_thinking else raw,
            logprobs=tuple(collected.logprobs) if call.want_logprobs else None,
        )

    async def _answer_stream(self, tenant: str, call: _Call) -> AsyncIterator[StreamEvent]:
        started = time.perf_counter()
        target = await self.resolve(tenant, call.model)
        now = self._clock()
        async with AsyncExitStack() as stack:
            chunks, first = await self._start(
                stack,
                target,
                lambda m: _open_stream(self._vllm, call.endpoint.path, {**call.payload, "model": m}),
            )
            stack.push_async_callback(chunks.aclose)
            completion_id = new_completion_id(now)
            yield Started(completion_id, target.model, target.adapter, target.version, int(now.timestamp()))
            collected = Collected(prompt_ids=call.endpoint.prompt_ids(first))
            thinking = ThinkingFilter() if call.strip_thinking else None
            async for chunk in _prepend(first, chunks):
                for choice in chunk.get("choices") or ():
                    delta = collected.add_choice(call.endpoint, choice)
                    if thinking:
                        delta = Delta(thinking.feed(delta.text))
                    elif not call.want_logprobs:
                        delta = Delta(delta.text)
                    if delta.text or delta.logprobs:
                        yield delta
            rest = thinking.flush() if thinking else ""
            if rest:
                yield Delta(rest)
        result = await self._record(tenant, target, call, collected, now, completion_id)
        raw = "".join(collected.text)
        call.seconds.labels("true", str(bool(target.adapter)).lower()).observe(time.perf_counter() - started)
        yield replace(result, text=strip_thinking(raw) if call.strip_thinking else raw)

    async def resolve(self, tenant: str, model: str) -> Target:
        """The base model, or the caller's adapter at its head (which must exist)."""
        if model == self._base:
            return Target(model=self._base)
        adapter = await self.adapter(tenant, model)
        if adapter.head_version < 1:
            raise FailedPrecondition(f"adapter '{adapter.name}' has no version yet", param="model")
        return Target(adapter.name, adapter.name, adapter.head_version, adapter.generation)

    async def adapter(self, tenant: str, model: str) -> Adapter:
        """The caller's adapter named ``model``; another tenant's is not found like a missing one."""
        name = qualify(tenant, model)
        try:
            return await self._storage.get_adapter(name)
        except NotFound:
            raise not_found(model) from None

    @asynccontextmanager
    async def served(self, target: Target, *, current: bool = True) -> AsyncIterator[str]:
        """The name vLLM serves ``target`` under, loaded and held while the body runs."""
        if not target.adapter:
            yield self._base
            return
        lease = self._loras.lease(target.adapter, target.version, generation=target.generation, current=current)
        async with lease as name:
            yield name

    async def _start(self, stack: AsyncExitStack, target: Target, send: Callable[[str], Awaitable[T]]) -> T:
        """Lease the served model on ``stack``, enter the engine gate as a generation and ``send`` to it.
        If vLLM lost the adapter (it restarted, or someone unloaded it) it is loaded again and sent once more."""
        for attempt in range(2):
            lease = AsyncExitStack()
            model = await lease.enter_async_context(self.served(target))
            try:
                await lease.enter_async_context(self._gate.shared())
                answer = await send(model)
            except NotFound:
                await lease.aclose()
                if attempt or not target.adapter:
                    raise
                log.warning("adapter_lost_by_vllm", vllm_name=model)
                self._loras.invalidate(model)
                continue
            except BaseException:
                await lease.aclose()
                raise
            stack.push_async_callback(lease.aclose)
            return answer
        raise AssertionError("unreachable")

    async def _record(
        self,
        tenant: str,
        target: Target,
        call: _Call,
        collected: Collected,
        now: datetime,
        completion_id: str | None = None,
    ) -> ChatResult:
        collected.check()
        rollout = Rollout(
            completion_id=completion_id or new_completion_id(now),
            tenant=tenant,
            adapter=target.adapter,
            version=target.version,
            messages=call.messages,
            prompt_ids=tuple(collected.prompt_ids),
            response_ids=tuple(collected.response_ids),
            sampled_logprobs=tuple(collected.sampled_logprobs),
            sampling=call.sampling,
            text="".join(collected.text),
            finish_reason=collected.finish_reason,
            created_at=now,
        )
        await self._rollouts.put(rollout)
        return ChatResult(
            completion_id=rollout.completion_id,
            model=target.model,
            text=rollout.text,
            adapter=target.adapter,
            version=target.version,
            prompt_tokens=len(rollout.prompt_ids),
            completion_tokens=len(rollout.response_ids),
            finish_reason=rollout.finish_reason,
            created=int(now.timestamp()),
        )


async def _open_stream(
    vllm: VllmClient, path: str, payload: dict[str, Any]
) -> tuple[AsyncIterator[dict[str, Any]], dict[str, Any]]:
    """The stream and its first chunk: errors vLLM reports up front surface here, before anything is sent."""
    chunks = vllm.stream(path, payload)
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        raise ClaasError("vLLM sent an empty stream") from None
    except BaseException:
        await chunks.aclose()
        raise
    return chunks, first


async def _prepend(first: dict[str, Any], rest: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    yield first
    async for item in rest:
        yield item
