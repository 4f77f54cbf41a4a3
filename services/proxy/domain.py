"""The proxy's own types: what a chat asks for and what it answers (no gRPC, no HTTP here).

Adapters, versions and jobs are the storage's and the trainer's types (``services.storage.domain``,
``services.trainer.domain``); chat messages are ``services.common.domain.Message``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.domain import Message

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Sampling:
    """``None`` means vLLM's default (max_tokens: the proxy's default)."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChatRequest:
    """One chat turn as both transports hand it to the core."""

    #: An adapter ("tenant/adapter" or "adapter" in the caller's tenant) or the base model's name.
    model: str
    messages: tuple[Message, ...]
    sampling: Sampling = field(default_factory=Sampling)
    #: Remove <think>...</think> from the text the caller sees; the rollout keeps every token.
    strip_thinking: bool = False
    #: Return the sampled tokens' logprobs with this many alternatives each (0..20); None returns none.
    top_logprobs: int | None = None


@dataclass(frozen=True)
class CompletionRequest:
    """One text completion (OpenAI's legacy ``/v1/completions``): a raw prompt, no chat template."""

    model: str
    prompt: str
    sampling: Sampling = field(default_factory=Sampling)
    #: Return the sampled tokens' logprobs with this many alternatives each (0..5); None returns none.
    logprobs: int | None = None


@dataclass(frozen=True)
class TopLogprob:
    """One of the most likely tokens at a position, as vLLM reports it."""

    token: str
    logprob: float
    #: UTF-8 bytes of the token (chat only; None where vLLM gives none).
    bytes: tuple[int, ...] | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """A sampled token, its logprob and the most likely alternatives at its position."""

    token: str
    logprob: float
    bytes: tuple[int, ...] | None = None
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class Delta:
    """A piece of a streamed answer: new text and, when asked for, the logprobs of its tokens."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class ScoreRequest:
    """Teacher-forced scoring of ``completion`` as the assistant's answer to ``messages``."""

    model: str
    messages: tuple[Message, ...]
    completion: str
    #: Adapter version; 0 = the head (and the only value the base model takes).
    version: int = 0


@dataclass(frozen=True)
class ScoreResult:
    """The completion's tokens (the template's, end of turn included) and log p of each given the rest."""

    model: str
    #: Full adapter name; empty for the base model.
    adapter: str
    version: int
    tokens: tuple[str, ...]
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def logprob_sum(self) -> float:
        return float(sum(self.logprobs))


@dataclass(frozen=True)
class Started:
    """First event of a streamed chat: vLLM accepted the request."""

    completion_id: str
    model: str
    adapter: str
    version: int
    created: int


@dataclass(frozen=True)
class ChatResult:
    """A finished answer, recorded as a rollout before it is returned."""

    completion_id: str
    #: What the caller asked for, as resolved: the full adapter name or the base model's name.
    model: str
    text: str
    #: Full adapter name; empty for the base model.
    adapter: str
    #: Adapter version that answered; 0 for the base model.
    version: int
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    #: Unix seconds; 0 where the transport does not carry it (gRPC).
    created: int
    #: The sampled tokens' logprobs when the request asked for them, else None.
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass(frozen=True)
class ModelInfo:
    """A model a caller can chat with: the base model or one of its adapters."""

    id: str
    created: int
    owned_by: str
    #: Head version of an adapter; 0 for the base model.
    version: int = 0


@dataclass(frozen=True)
class Preload:
    """Load an adapter version into vLLM ahead of its first call (a new head, a feedback that waits)."""

    #: Full "tenant/adapter" name.
    adapter: str
    version: int
    generation: int = 1


@dataclass(frozen=True)
class Preloaded:
    """The version a ``Preload`` named is loaded."""


@dataclass(frozen=True)
class Busy:
    """An owner replica's refusal of a forwarded call: its calls in flight for the adapter are at the limit."""

    in_flight: int


#: What one proxy replica forwards to another, and what comes back (``services.proxy.routing``).
PeerCall = ChatRequest | CompletionRequest | ScoreRequest | Preload
PeerEvent = Busy | Started | Delta | ChatResult | ScoreResult | Preloaded
