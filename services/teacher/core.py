"""The teacher's logic: validate a Score request, build the hindsight prompts, hand the sequences to a
backend and put the answers back together. No transport here; backends do the arithmetic.

One item becomes one scored sequence (hindsight prompt + response ids), plus a second one with the
neutral follow-up in place of the feedback when the item asks for the contrastive baseline.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import structlog

from services.common.domain import Message
from services.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.storage.layout import check_name
from services.teacher.domain import (
    AdapterRef,
    BackendInfo,
    ScoreItem,
    ScoreRequest,
    ScoreResult,
    ScoringInput,
    TeacherMode,
    TeacherSpec,
    TokenDistributions,
)
from services.teacher.prompts import hindsight_messages, render_prompt, template_names

log = structlog.get_logger("claas.teacher")

#: What a log-probability of -inf is sent as (exp of it is 0 in every float type).
NEG_INF_LOGPROB = -1.0e4
_ROLES = ("system", "user", "assistant")


class ScoringBackend(Protocol):
    """What computes the distributions: the model in process (hf) or a vLLM server."""

    #: The tokenizer whose chat template renders prompts; set by ``load``.
    tokenizer: object

    async def load(self) -> BackendInfo: ...

    async def score(
        self, inputs: Sequence[ScoringInput], *, top_k: int, teacher: TeacherSpec
    ) -> list[TokenDistributions]: ...

    async def close(self) -> None: ...


class AdapterResolver(Protocol):
    """Turns "the head of an adapter" into a version (``adapters.AdapterFiles``)."""

    async def resolve(self, ref: AdapterRef) -> AdapterRef:
        """The same adapter with version 0 replaced by the current head, and its generation."""
        ...


def finite_logprobs(values: np.ndarray) -> np.ndarray:
    """float32 with -inf (and anything below) raised to ``NEG_INF_LOGPROB``."""
    return np.maximum(np.asarray(values, dtype=np.float32), np.float32(NEG_INF_LOGPROB))


def log1mexp(log_mass: np.ndarray) -> np.ndarray:
    """log(1 - exp(x)) for x <= 0, accurate at both ends (Mächler 2012); x >= 0 gives -inf."""
    x = np.minimum(np.asarray(log_mass, dtype=np.float64), 0.0)
    with np.errstate(divide="ignore"):
        return np.where(x > -np.log(2.0), np.log(-np.expm1(x)), np.log1p(-np.exp(x)))


class Teacher:
    """The teacher's core: checks a Score request against the loaded model, renders the hindsight prompts,
    resolves the adapter for the self and trust_region modes, and has the backend score every sequence."""

    def __init__(
        self,
        backend: ScoringBackend,
        *,
        adapters: AdapterResolver | None = None,
        default_template: str = "hindsight",
    ) -> None:
        self._backend = backend
        self._adapters = adapters
        self._default_template = default_template
        self._info: BackendInfo | None = None

    async def start(self) -> None:
        """Load the model (or tokenizer and server facts); Score is refused until then."""
        self._info = await self._backend.load()
        log.info("teacher_ready", backend=self._info.name, model=self._info.model_id)

    async def close(self) -> None:
        await self._backend.close()

    @property
    def tokenizer(self):
        """The tokenizer that renders teacher prompts (loaded by ``start``)."""
        return self._backend.tokenizer

    def info(self) -> BackendInfo:
        if self._info is None:
            raise Unavailable("the teacher model is still loading")
        return self._info

    async def score(self, request: ScoreRequest) -> list[ScoreResult]:
        started = time.perf_counter()
        info = self.info()
        template = request.template or self._default_template
        _check_request(request, info, template)
        inputs: list[ScoringInput] = []
        neutral_prompts: list[tuple[int, tuple[int, ...]]] = []
        prompts: list[tuple[str, int]] = []
        for index, item in enumerate(request.items):
            _check_item(index, item, info)
            text, ids = self._prompt(index, item, item.feedback, template, info)
            inputs.append(ScoringInput(tuple(ids), item.response_ids, _support(item)))
            prompts.append((text, len(ids)))
            if item.neutral_followup:
                _, neutral_ids = self._prompt(index, item, item.neutral_followup, template, info)
                neutral_prompts.append((index, tuple(neutral_ids)))
        if neutral_prompts and not info.supports_support_ids:
            raise FailedPrecondition(
                f"the contrastive baseline scores the neutral follow-up at the teacher's own ids, which the "
                f"{info.name} backend cannot gather; use the hf backend"
            )
        # Only a request found valid costs a storage round trip.
        teacher = await self._teacher_spec(request)
        mains = await self._backend.score(inputs, top_k=request.top_k, teacher=teacher)
        # The neutral is scored at the very ids of the feedback's distribution, so that the two can be
        # subtracted bucket by bucket (the trainer's contrastive target needs one support for both).
        neutral_inputs = [
            ScoringInput(prompt_ids, inputs[index].response_ids, mains[index].ids)
            for index, prompt_ids in neutral_prompts
        ]
        neutrals = (
            await self._backend.score(neutral_inputs, top_k=request.top_k, teacher=teacher) if neutral_inputs else []
        )
        neutral_by_item = {index: dist for (index, _), dist in zip(neutral_prompts, neutrals, strict=True)}
        results = [
            ScoreResult(main, neutral_by_item.get(index), text, prompt_tokens)
            for index, (main, (text, prompt_tokens)) in enumerate(zip(mains, prompts, strict=True))
        ]
        scored_inputs = [*inputs, *neutral_inputs]
        log.info(
            "scored",
            items=len(request.items),
            sequences=len(scored_inputs),
            tokens=sum(len(i.response_ids) for i in scored_inputs),
            mode=teacher.mode.value,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return results

    def render(self, messages: Sequence[Message], feedback: str, template: str = "") -> tuple[str, list[int]]:
        """The teacher prompt (text, ids) for a conversation and feedback; empty feedback: the plain one."""
        return render_prompt(self.tokenizer, hindsight_messages(messages, feedback, template or self._default_template))

    def _prompt(
        self, index: int, item: ScoreItem, feedback: str, template: str, info: BackendInfo
    ) -> tuple[str, list[int]]:
        text, ids = self.render(item.messages, feedback, template)
        total = len(ids) + len(item.response_ids)
        if total > info.max_context:
            raise InvalidArgument(
                f"items[{index}]: prompt ({len(ids)} tokens) + response ({len(item.response_ids)} tokens) = "
                f"{total} tokens exceeds the model's context of {info.max_context}",
                param=f"items[{index}]",
            )
        return text, ids

    async def _teacher_spec(self, request: ScoreRequest) -> TeacherSpec:
        if request.mode not in (TeacherMode.SELF, TeacherMode.TRUST_REGION):
            return TeacherSpec(request.mode)
        if self._adapters is None:
            raise FailedPrecondition(f"{request.mode.value} mode needs adapters, and this teacher has no storage")
        assert request.adapter is not None  # _check_request
        adapter = await self._adapters.resolve(request.adapter)
        return TeacherSpec(request.mode, adapter, request.mu)


def _check_request(request: ScoreRequest, info: BackendInfo, template: str) -> None:
    if not request.items:
        raise InvalidArgument("items is empty: a Score request needs at least one item", param="items")
    if not 1 <= request.top_k <= info.max_top_k:
        raise InvalidArgument(
            f"top_k must be in [1, {info.max_top_k}] ({info.top_k_cap}), got {request.top_k}", param="top_k"
        )
    if template not in template_names():
        raise InvalidArgument(
            f"unknown template {template!r}; choose one of {', '.join(template_names())}", param="template"
        )
    mode = request.mode
    if mode in (TeacherMode.SELF, TeacherMode.TRUST_REGION) and (request.adapter is None or not request.adapter.name):
        raise InvalidArgument(f"{mode.value} mode needs an adapter (name, version)", param="adapter")
    if request.adapter is not None:
        try:
            check_name(request.adapter.name)
        except InvalidArgument as exc:  # refused here: only a valid request costs a storage round trip
            raise InvalidArgument(exc.message, param="adapter") from None
    if request.adapter is not None and request.adapter.version < 0:
        raise InvalidArgument(f"adapter version must be >= 0, got {request.adapter.version}", param="adapter")
    if mode is TeacherMode.TRUST_REGION:
        if not 0.0 <= request.mu <= 1.0:
            raise InvalidArgument(f"trust_region_mu must be in [0, 1], got {request.mu}", param="trust_region_mu")
        if not info.supports_trust_region:
            raise FailedPrecondition(
                f"the {info.name} backend cannot blend logits for trust_region; run the teacher with the hf backend"
            )
    if mode is TeacherMode.REMOTE:
        if info.remote_fingerprint is None:
            raise FailedPrecondition("remote mode needs a remote model; none is configured (CLAAS_REMOTE_MODEL)")
        if info.remote_fingerprint != info.tokenizer_fingerprint:
            raise FailedPrecondition(
                f"the remote model's tokenizer (fingerprint {info.remote_fingerprint}) differs from the base "
                f"model's ({info.tokenizer_fingerprint}); token ids would not mean the same"
            )
    if not info.supports_support_ids and any(item.support_ids or item.support_k for item in request.items):
        raise FailedPrecondition(f"the {info.name} backend returns only its own top-K; support ids need the hf backend")


def _check_item(index: int, item: ScoreItem, info: BackendInfo) -> None:
    where = f"items[{index}]"
    if not item.messages:
        raise InvalidArgument(f"{where}: the conversation is empty", param=f"{where}.messages")
    for m in item.messages:
        if m.role not in _ROLES:
            raise InvalidArgument(
                f"{where}: message role must be one of {', '.join(_ROLES)}, got {m.role!r}", param=f"{where}.messages"
            )
    if not any(m.role == "user" for m in item.messages):
        raise InvalidArgument(f"{where}: the conversation has no user message", param=f"{where}.messages")
    if not item.response_ids:
        raise InvalidArgument(f"{where}: response_ids is empty", param=f"{where}.response_ids")
    _check_ids(f"{where}.response_ids", item.response_ids, info.vocab_size)
    if item.support_ids or item.support_k:
        if not 1 <= item.support_k <= info.max_top_k:
            raise InvalidArgument(
                f"{where}: support_k must be in [1, {info.max_top_k}], got {item.support_k}",
                param=f"{where}.support_k",
            )
        expected = len(item.response_ids) * item.support_k
        if len(item.support_ids) != expected:
            raise InvalidArgument(
                f"{where}: support_ids must hold T * support_k = {len(item.response_ids)} * {item.support_k} = "
                f"{expected} ids, got {len(item.support_ids)}",
                param=f"{where}.support_ids",
            )
        _check_ids(f"{where}.support_ids", item.support_ids, info.vocab_size)


def _check_ids(field: str, ids: Sequence[int], vocab_size: int) -> None:
    array = np.asarray(ids, dtype=np.int64)
    bad = np.flatnonzero((array < 0) | (array >= vocab_size))
    if bad.size:
        first = int(bad[0])
        raise InvalidArgument(
            f"{field}[{first}] = {int(array[first])} is outside the vocabulary [0, {vocab_size})", param=field
        )


def _support(item: ScoreItem) -> np.ndarray | None:
    if not item.support_ids:
        return None
    return np.asarray(item.support_ids, dtype=np.int64).reshape(len(item.response_ids), item.support_k)
