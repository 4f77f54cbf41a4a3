"""Bodies of ``POST /v1/completions`` (OpenAI's legacy text completions) and ``POST /v1/score`` (ours, in the
shape the reference system's users call).

A text completion's ``logprobs`` is OpenAI's legacy format: parallel lists of the sampled tokens, their
logprobs, ``{token: logprob}`` of the most likely alternatives, and each token's character offset in the text.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.proxy.domain import ChatResult, CompletionRequest, Sampling, ScoreRequest, ScoreResult, TokenLogprob
from services.proxy.openai.protocol import ChatMessageParam, StreamOptions, Usage, core_messages, refuse_unsupported


class CompletionCreateRequest(BaseModel):
    """The body of ``POST /v1/completions``: one string prompt, one choice."""

    model_config = ConfigDict(extra="ignore")

    model: str
    prompt: str = Field(description="One string (lists of prompts or token ids are refused).")
    logprobs: int | None = Field(None, description="0..5 alternatives per token, OpenAI's legacy format.")
    max_tokens: int | None = Field(None, ge=1, description="Unset: the proxy's default_max_tokens.")
    n: Literal[1] = 1
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1, description="An int64, as the gRPC surface carries it.")
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _supported(cls, data: Any) -> Any:
        refuse_unsupported(set(cls.model_fields), data)
        return data

    def to_core(self) -> CompletionRequest:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or ())
        return CompletionRequest(
            model=self.model,
            prompt=self.prompt,
            sampling=Sampling(
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                top_p=self.top_p,
                seed=self.seed,
                stop=tuple(stop),
            ),
            logprobs=self.logprobs,
        )


class LegacyLogprobs(BaseModel):
    """OpenAI's legacy logprobs of a text completion's tokens."""

    text_offset: list[int]
    token_logprobs: list[float]
    tokens: list[str]
    top_logprobs: list[dict[str, float]]

    @classmethod
    def of(cls, items: tuple[TokenLogprob, ...] | None, offset: int = 0) -> LegacyLogprobs | None:
        """``offset``: characters of text before these tokens (earlier chunks of a stream)."""
        if items is None:
            return None
        offsets = []
        for item in items:
            offsets.append(offset)
            offset += len(item.token)
        return cls(
            text_offset=offsets,
            token_logprobs=[item.logprob for item in items],
            tokens=[item.token for item in items],
            top_logprobs=[{top.token: top.logprob for top in item.top} for item in items],
        )


class CompletionChoice(BaseModel):
    """The one choice of a text completion (or of one streamed chunk of it)."""

    text: str
    index: int = 0
    logprobs: LegacyLogprobs | None = None
    finish_reason: str | None = None


class TextCompletion(BaseModel):
    """The answer of ``POST /v1/completions``, and (``object`` the same, as OpenAI sends it) each event of
    its stream."""

    id: str
    choices: list[CompletionChoice]
    created: int
    model: str
    object: Literal["text_completion"] = "text_completion"
    usage: Usage | None = None
    adapter: str | None = None  # extension
    adapter_version: int = 0  # extension

    @classmethod
    def of(cls, result: ChatResult) -> TextCompletion:
        choice = CompletionChoice(
            text=result.text, logprobs=LegacyLogprobs.of(result.logprobs), finish_reason=result.finish_reason
        )
        return cls(
            id=result.completion_id,
            choices=[choice],
            created=result.created,
            model=result.model,
            usage=Usage.of(result),
            adapter=result.adapter or None,
            adapter_version=result.version,
        )


class ScoreBody(BaseModel):
    """The body of ``POST /v1/score``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="An adapter of yours or the base model's name.")
    messages: list[ChatMessageParam]
    completion: str = Field(description="The assistant's answer to score.")
    version: int | None = Field(None, description="Adapter version; unset or 0: the head.")

    def to_core(self) -> ScoreRequest:
        return ScoreRequest(self.model, core_messages(self.messages), self.completion, self.version or 0)


class ScoreResponse(BaseModel):
    """Log p of each of the completion's tokens (the chat template's, end of turn included) given all before
    it, under the version that scored."""

    object: Literal["score"] = "score"
    model: str
    adapter: str | None = Field(description="Full adapter name; null for the base model.")
    adapter_version: int = Field(description="Version that scored; 0 for the base model.")
    tokens: list[str]
    token_ids: list[int]
    logprobs: list[float]
    logprob_sum: float
    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def of(cls, result: ScoreResult) -> ScoreResponse:
        return cls(
            model=result.model,
            adapter=result.adapter or None,
            adapter_version=result.version,
            tokens=list(result.tokens),
            token_ids=list(result.token_ids),
            logprobs=list(result.logprobs),
            logprob_sum=result.logprob_sum,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
        )
