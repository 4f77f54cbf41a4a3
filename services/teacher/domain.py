"""The teacher's plain types: what a Score request asks, what comes back, and what a backend is told and
reports. No gRPC, no torch; arrays are numpy."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from services.common.domain import Message


class TeacherMode(enum.Enum):
    BASE = "base"
    SELF = "self"
    TRUST_REGION = "trust_region"
    REMOTE = "remote"


@dataclass(frozen=True)
class AdapterRef:
    """``name`` is "tenant/adapter"; ``version`` 0 means the current head. ``generation`` tells an adapter
    from one created again under its name (``Adapter.generation``); set by the resolver."""

    name: str
    version: int = 0
    generation: int = 1


@dataclass(frozen=True)
class ScoreItem:
    messages: tuple[Message, ...]
    #: Empty: no hindsight block, the plain conversation is scored (the student's own context).
    feedback: str
    response_ids: tuple[int, ...]
    #: T * support_k ids, row-major; empty means the teacher's own top-K.
    support_ids: tuple[int, ...] = ()
    support_k: int = 0
    #: Non-empty: also score the response with this text in place of the feedback.
    neutral_followup: str = ""


@dataclass(frozen=True)
class ScoreRequest:
    items: tuple[ScoreItem, ...]
    top_k: int
    mode: TeacherMode = TeacherMode.BASE
    adapter: AdapterRef | None = None
    mu: float = 0.0
    #: Empty: the service's default template.
    template: str = ""


@dataclass(frozen=True)
class TokenDistributions:
    """Per-position distributions of T response positions over K ids plus a tail bucket (all finite)."""

    ids: np.ndarray  # [T, K] int32
    logprobs: np.ndarray  # [T, K] float32
    sampled_logprobs: np.ndarray  # [T] float32
    tail_logprobs: np.ndarray  # [T] float32

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])


@dataclass(frozen=True)
class ScoreResult:
    teacher: TokenDistributions
    neutral: TokenDistributions | None
    teacher_prompt: str
    prompt_tokens: int


@dataclass(frozen=True)
class TeacherSpec:
    """Who scores, as a backend receives it: the adapter's version is already resolved (>= 1)."""

    mode: TeacherMode
    adapter: AdapterRef | None = None
    mu: float = 0.0


@dataclass(frozen=True)
class ScoringInput:
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    #: [T, K] ids to gather at instead of the top-K, or None.
    support_ids: np.ndarray | None = None


@dataclass(frozen=True)
class BackendInfo:
    name: str
    model_id: str
    tokenizer_fingerprint: str
    vocab_size: int
    max_context: int
    max_top_k: int
    #: What sets max_top_k, quoted in errors.
    top_k_cap: str
    supports_support_ids: bool
    supports_trust_region: bool
    #: Tokenizer fingerprint of the remote model; None when none is configured.
    remote_fingerprint: str | None

    def summary(self) -> TeacherInfo:
        """What the Info RPC tells callers."""
        return TeacherInfo(
            model_id=self.model_id,
            tokenizer_fingerprint=self.tokenizer_fingerprint,
            backend=self.name,
            max_top_k=self.max_top_k,
            vocab_size=self.vocab_size,
            max_context=self.max_context,
        )


@dataclass(frozen=True)
class TeacherInfo:
    """The teacher as its callers see it (the Info RPC): which model and tokenizer, which backend, its limits."""

    model_id: str
    tokenizer_fingerprint: str
    backend: str
    max_top_k: int
    vocab_size: int
    max_context: int
