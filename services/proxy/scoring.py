"""Score: teacher-forced log-probs of a completion after a conversation, under the base model or an adapter
version, computed by vLLM on exactly the tokens its chat template gives.

vLLM tokenises (``/tokenize`` with ``messages``, through the model's own chat template, so the proxy has no
tokeniser of its own): once the conversation with the generation prompt, once the conversation plus the
completion as the assistant's turn. The completion's tokens are the second's ids after the first's (end of turn
and whatever the template puts after it included), which must be a prefix. Then one ``/v1/completions``
request on those ids with ``prompt_logprobs`` gives log p of each, on the vLLM name of the version — alone in
the engine (``EngineGate.exclusive``). A score is a read: nothing is recorded.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import structlog
from prometheus_client import Histogram

from services.common.errors import ClaasError, FailedPrecondition, InvalidArgument, NotFound, RequestTooLarge
from services.proxy.domain import ScoreRequest, ScoreResult
from services.proxy.gate import EngineGate
from services.proxy.inference import Inference, Target
from services.proxy.limits import ChatLimits
from services.proxy.loras import LoraManager
from services.proxy.vllm import VllmClient
from services.storage.domain import Version

log = structlog.get_logger("claas.proxy.scoring")

SCORE_SECONDS = Histogram("claas_proxy_score_seconds", "Score latency through the proxy.", ["adapter"])


class VersionReader(Protocol):
    """Where a version's existence is checked (storage)."""

    async def get_version(self, name: str, version: int = 0) -> Version: ...


class Scoring:
    """Scores for the caller's adapters (any committed version) and the base model."""

    def __init__(
        self,
        *,
        inference: Inference,
        storage: VersionReader,
        loras: LoraManager,
        vllm: VllmClient,
        limits: ChatLimits,
        gate: EngineGate,
        base_model: str,
    ) -> None:
        self._inference = inference
        self._storage = storage
        self._loras = loras
        self._vllm = vllm
        self._limits = limits
        self._gate = gate
        self._base = base_model

    async def score(self, tenant: str, request: ScoreRequest) -> ScoreResult:
        started = time.perf_counter()
        self._limits.check_score(request)
        target, current = await self._target(tenant, request)
        prompt_ids, full_ids = await self._tokenize(request)
        body = await self._prompt_logprobs(target, current, full_ids)
        tokens, logprobs = _completion_logprobs(body, full_ids, len(prompt_ids))
        SCORE_SECONDS.labels(str(bool(target.adapter)).lower()).observe(time.perf_counter() - started)
        return ScoreResult(
            model=target.model,
            adapter=target.adapter,
            version=target.version,
            tokens=tuple(tokens),
            token_ids=tuple(full_ids[len(prompt_ids) :]),
            logprobs=tuple(logprobs),
            prompt_tokens=len(prompt_ids),
        )

    async def _target(self, tenant: str, request: ScoreRequest) -> tuple[Target, bool]:
        """What scores, and whether it is the adapter's current version (an older one is loaded for this
        request only)."""
        if request.model == self._base:
            if request.version:
                raise InvalidArgument("the base model has no versions: leave 'version' out", param="version")
            return Target(model=self._base), True
        adapter = await self._inference.adapter(tenant, request.model)
        if not request.version or request.version == adapter.head_version:
            if adapter.head_version < 1:
                raise FailedPrecondition(f"adapter '{adapter.name}' has no version yet", param="model")
            return Target(adapter.name, adapter.name, adapter.head_version, adapter.generation), True
        try:
            await self._storage.get_version(adapter.name, request.version)
        except NotFound:
            raise NotFound(f"adapter '{request.model}' has no version {request.version}", param="version") from None
        return Target(adapter.name, adapter.name, request.version, adapter.generation), False

    async def _tokenize(self, request: ScoreRequest) -> tuple[list[int], list[int]]:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        prompt = await self._vllm.tokenize({"model": self._base, "messages": messages, "add_generation_prompt": True})
        turn = {"role": "assistant", "content": request.completion}
        full = await self._vllm.tokenize(
            {"model": self._base, "messages": [*messages, turn], "add_generation_prompt": False}
        )
        prompt_ids, full_ids = list(prompt["tokens"]), list(full["tokens"])
        if full_ids[: len(prompt_ids)] != prompt_ids:
            # The template's generation prompt does not end where the assistant's turn begins in tokens
            # (a completion whose first characters merge with the prompt's last token): no exact split.
            raise InvalidArgument(
                "the chat template's tokens of messages + completion do not start with those of messages and "
                "the generation prompt, so the completion's tokens cannot be told apart",
                param="completion",
            )
        completion = len(full_ids) - len(prompt_ids)
        if completion > self._limits.max_tokens_cap:
            raise RequestTooLarge(
                f"completion is {completion} tokens, at most {self._limits.max_tokens_cap} allowed", param="completion"
            )
        context = int(full.get("max_model_len") or 0)
        if context and len(full_ids) + 1 > context:  # vLLM generates one token after the prompt
            raise RequestTooLarge(
                f"messages and completion are {len(full_ids)} tokens, over the model's context of {context - 1}",
                param="messages",
            )
        return prompt_ids, full_ids

    async def _prompt_logprobs(self, target: Target, current: bool, ids: list[int]) -> dict[str, Any]:
        """vLLM's answer with the prompt's logprobs; a version vLLM lost (it restarted) is loaded once more."""
        for attempt in range(2):
            async with self._inference.served(target, current=current) as name:
                payload = {"model": name, "prompt": ids, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0}
                try:
                    async with self._gate.exclusive():
                        return await self._vllm.completions(payload)
                except NotFound:
                    if attempt or not target.adapter:
                        raise
                    log.warning("adapter_lost_by_vllm", vllm_name=name)
                    self._loras.invalidate(name)
        raise AssertionError("unreachable")


def _completion_logprobs(body: dict[str, Any], ids: list[int], start: int) -> tuple[list[str], list[float]]:
    """The decoded token and log p of each id from ``start`` on, out of vLLM's per-position prompt logprobs
    ({token id: {logprob, rank, decoded_token}}; the first position has none)."""
    positions = ((body.get("choices") or [{}])[0]).get("prompt_logprobs") or []
    if len(positions) != len(ids):
        raise ClaasError(f"vLLM returned prompt logprobs for {len(positions)} of {len(ids)} tokens")
    tokens: list[str] = []
    logprobs: list[float] = []
    for index in range(start, len(ids)):
        entry = (positions[index] or {}).get(str(ids[index]))
        if entry is None:
            raise ClaasError(f"vLLM returned no logprob for token {ids[index]} at position {index}")
        tokens.append(entry.get("decoded_token") or "")
        logprobs.append(float(entry["logprob"]))
    return tokens, logprobs
