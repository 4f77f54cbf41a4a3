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


@dataclass(frozen=True)
class ModelInfo:
    """A model a caller can chat with: the base model or one of its adapters."""

    id: str
    created: int
    owned_by: str
    #: Head version of an adapter; 0 for the base model.
    version: int = 0
