"""Chat: resolve the model to an adapter head, make vLLM serve it, forward, record the rollout.

The rollout (exact prompt and response token ids, sampled logprobs) is written before the answer is
returned, and for a stream before its final event, so feedback can always find it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol, TypeVar

import structlog
from prometheus_client import Histogram

from services.common.errors import ClaasError, FailedPrecondition, NotFound
from services.proxy.domain import ChatRequest, ChatResult, Sampling, Started
from services.proxy.limits import ChatLimits
from services.proxy.loras import LoraManager
from services.proxy.rollouts import Rollout, RolloutStore, new_completion_id, utcnow
from services.proxy.tenancy import not_found, qualify
from services.proxy.thinking import ThinkingFilter, strip_thinking
from services.proxy.vllm import VllmClient
from services.storage.domain import Adapter

log = structlog.get_logger("claas.proxy.inference")

CHAT_SECONDS = Histogram("claas_proxy_chat_seconds", "Chat latency through the proxy.", ["stream", "adapter"])

T = TypeVar("T")
StreamEvent = Started | str | ChatResult


class AdapterReader(Protocol):
    """Where an adapter's head is looked up (storage)."""

    async def get_adapter(self, name: str) -> Adapter: ...


@dataclass(frozen=True)
class _Target:
    model: str
    adapter: str = ""
    version: int = 0


@dataclass
class _Collected:
    """What vLLM produced, gathered from one answer or from the chunks of a stream."""

    prompt_ids: list[int] = field(default_factory=list)
    response_ids: list[int] = field(default_factory=list)
    sampled_logprobs: list[float] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    finish_reason: str = ""

    def add_choice(self, choice: dict[str, Any], text: str | None) -> str:
        self.response_ids.extend(choice.get("token_ids") or ())
        self.sampled_logprobs.extend(item["logprob"] for item in (choice.get("logprobs") or {}).get("content") or ())
        self.finish_reason = choice.get("finish_reason") or self.finish_reason
        self.text.append(text or "")
        return text or ""

    def check(self) -> None:
        prompt, response, logprobs = len(self.prompt_ids), len(self.response_ids), len(self.sampled_logprobs)
        if not prompt or response != logprobs:
            raise ClaasError(
                f"vLLM's answer lacks token ids or logprobs ({prompt} prompt ids, {response} ids, {logprobs} logprobs)"
            )


class Inference:
    """Chat with the base model or one of the caller's adapters, plain or streamed; every answer is
    recorded as a rollout before it is returned."""

    def __init__(
        self,
        *,
        storage: AdapterReader,
        loras: LoraManager,
        vllm: VllmClient,
        rollouts: RolloutStore,
        limits: ChatLimits,
        base_model: str,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._storage = storage
        self._loras = loras
        self._vllm = vllm
        self._rollouts = rollouts
        self._limits = limits
        self._base = base_model
        self._clock = clock

    async def chat(self, tenant: str, request: ChatRequest) -> ChatResult:
        started = time.perf_counter()
        sampling = self._limits.check(request)
        target = await self._resolve(tenant, request.model)
        now = self._clock()
        async with AsyncExitStack() as stack:
            body = await self._start(stack, target, lambda m: self._vllm.chat(_payload(m, request, sampling)))
        choices = body.get("choices") or [{}]
        collected = _Collected(prompt_ids=list(body.get("prompt_token_ids") or ()))
        raw = collected.add_choice(choices[0], (choices[0].get("message") or {}).get("content"))
        result = await self._record(tenant, target, request, sampling, collected, now)
        text = strip_thinking(raw) if request.strip_thinking else raw
        CHAT_SECONDS.labels("false", str(bool(target.adapter)).lower()).observe(time.perf_counter() - started)
        return replace(result, text=text)

    async def chat_stream(self, tenant: str, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """``Started`` once vLLM accepted the request, then text deltas, then the ``ChatResult`` (whose text
        is the whole answer). Closing the iterator early cancels the request in vLLM."""
        started = time.perf_counter()
        sampling = self._limits.check(request)
        target = await self._resolve(tenant, request.model)
        now = self._clock()
        async with AsyncExitStack() as stack:
            chunks, first = await self._start(
                stack, target, lambda m: _open_stream(self._vllm, _payload(m, request, sampling, stream=True))
            )
            stack.push_async_callback(chunks.aclose)
            completion_id = new_completion_id(now)
            yield Started(completion_id, target.model, target.adapter, target.version, int(now.timestamp()))
            collected = _Collected(prompt_ids=list(first.get("prompt_token_ids") or ()))
            thinking = ThinkingFilter() if request.strip_thinking else None
            async for chunk in _prepend(first, chunks):
                for choice in chunk.get("choices") or ():
                    delta = collected.add_choice(choice, (choice.get("delta") or {}).get("content"))
                    visible = thinking.feed(delta) if thinking else delta
                    if visible:
                        yield visible
            rest = thinking.flush() if thinking else ""
            if rest:
                yield rest
        result = await self._record(tenant, target, request, sampling, collected, now, completion_id)
        raw = "".join(collected.text)
        CHAT_SECONDS.labels("true", str(bool(target.adapter)).lower()).observe(time.perf_counter() - started)
        yield replace(result, text=strip_thinking(raw) if request.strip_thinking else raw)

    async def _resolve(self, tenant: str, model: str) -> _Target:
        if model == self._base:
            return _Target(model=self._base)
        name = qualify(tenant, model)
        try:
            adapter = await self._storage.get_adapter(name)
        except NotFound:
            raise not_found(model) from None
        if adapter.head_version < 1:
            raise FailedPrecondition(f"adapter '{name}' has no version yet", param="model")
        return _Target(model=name, adapter=name, version=adapter.head_version)

    @asynccontextmanager
    async def _served(self, target: _Target) -> AsyncIterator[str]:
        if not target.adapter:
            yield self._base
            return
        async with self._loras.lease(target.adapter, target.version) as name:
            yield name

    async def _start(self, stack: AsyncExitStack, target: _Target, send: Callable[[str], Awaitable[T]]) -> T:
        """Lease the served model on ``stack`` and ``send`` to it. If vLLM lost the adapter (it restarted,
        or someone unloaded it) it is loaded again and sent once more."""
        for attempt in range(2):
            lease = AsyncExitStack()
            model = await lease.enter_async_context(self._served(target))
            try:
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
        target: _Target,
        request: ChatRequest,
        sampling: Sampling,
        collected: _Collected,
        now: datetime,
        completion_id: str | None = None,
    ) -> ChatResult:
        collected.check()
        rollout = Rollout(
            completion_id=completion_id or new_completion_id(now),
            tenant=tenant,
            adapter=target.adapter,
            version=target.version,
            messages=request.messages,
            prompt_ids=tuple(collected.prompt_ids),
            response_ids=tuple(collected.response_ids),
            sampled_logprobs=tuple(collected.sampled_logprobs),
            sampling=sampling,
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


def _payload(model: str, request: ChatRequest, sampling: Sampling, *, stream: bool = False) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "max_tokens": sampling.max_tokens,
        # The rollout needs exactly what was sampled: token ids of prompt and answer, and their logprobs.
        "logprobs": True,
        "return_token_ids": True,
    }
    optional = {"temperature": sampling.temperature, "top_p": sampling.top_p, "seed": sampling.seed}
    payload.update({k: v for k, v in optional.items() if v is not None})
    if sampling.stop:
        payload["stop"] = list(sampling.stop)
    if stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    return payload


async def _open_stream(
    vllm: VllmClient, payload: dict[str, Any]
) -> tuple[AsyncIterator[dict[str, Any]], dict[str, Any]]:
    """The stream and its first chunk: errors vLLM reports up front surface here, before anything is sent."""
    chunks = vllm.chat_stream(payload)
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
