"""Request and response bodies of the OpenAI-compatible surface, in the OpenAI docs' field order.

Fields that OpenAI does not define are ours and marked ``# extension``. Clients written for OpenAI ignore
them; the official ``openai`` client exposes them as attributes of its response objects.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.common.domain import Message
from services.common.errors import InvalidArgument
from services.proxy.domain import ChatRequest, ChatResult, ModelInfo, Sampling, TokenLogprob
from services.proxy.openai.objects import AdapterObject, FeedbackRecordObject, JobObject, VersionObject


class TextPart(BaseModel):
    """A text part of a message's content (the only kind of part the proxy takes)."""

    type: Literal["text"]
    text: str


class ChatMessageParam(BaseModel):
    """A message of the conversation: its content is a string or a list of text parts."""

    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


def core_messages(messages: list[ChatMessageParam]) -> tuple[Message, ...]:
    """The conversation as the core takes it: ``developer`` is OpenAI's newer name for ``system``."""
    converted = []
    for index, message in enumerate(messages):
        if not isinstance(message.content, str) and not message.content:
            raise InvalidArgument(f"messages[{index}].content is empty", param="messages")
        role = "system" if message.role == "developer" else message.role
        converted.append(Message(role=role, content=message.text()))
    return tuple(converted)


class StreamOptions(BaseModel):
    """Options of a streamed answer: ``include_usage`` adds a last chunk with the token counts."""

    include_usage: bool = False


#: OpenAI fields that change nothing the proxy does (bookkeeping on OpenAI's side): accepted and dropped.
HARMLESS = frozenset(
    {"metadata", "parallel_tool_calls", "prompt_cache_key", "safety_identifier", "service_tier", "store"}
)
#: Values of unimplemented OpenAI fields that ask for nothing beyond what the proxy does anyway.
NEUTRAL: dict[str, Any] = {
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "modalities": ["text"],
    "best_of": 1,
    "echo": False,
    "logit_bias": {},
    "tools": [],
}


def refuse_unsupported(fields: set[str], data: Any) -> None:
    """Every field the proxy does not implement is refused by name (``param``), rather than silently ignored:
    a caller who asks for tools or a JSON schema must not get an answer that looks like one."""
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        if key in fields or key in HARMLESS or value is None or (key in NEUTRAL and NEUTRAL[key] == value):
            continue
        raise InvalidArgument(f"'{key}' is not supported by this server", param=key)


class ChatCompletionRequest(BaseModel):
    """The body of ``POST /v1/chat/completions``."""

    # Fields OpenAI defines that the proxy does not implement are refused by name (``refuse_unsupported``).
    model_config = ConfigDict(extra="ignore")

    messages: list[ChatMessageParam]
    model: str
    logprobs: bool = False
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1, description="Deprecated by OpenAI for max_completion_tokens.")
    n: int = Field(1, description="Only 1 is supported.")
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1, description="An int64, as the gRPC surface carries it.")
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_logprobs: int | None = Field(None, description="0..20 alternatives per token; needs logprobs.")
    top_p: float | None = None
    user: str | None = None
    strip_thinking: bool = Field(  # extension
        False, description="Remove <think>...</think> blocks from the answer (the rollout keeps them)."
    )

    @model_validator(mode="before")
    @classmethod
    def _supported(cls, data: Any) -> Any:
        refuse_unsupported(set(cls.model_fields), data)
        return data

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    def to_core(self) -> ChatRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidArgument("top_logprobs needs logprobs: true", param="top_logprobs")
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or ())
        return ChatRequest(
            model=self.model,
            messages=core_messages(self.messages),
            sampling=Sampling(
                max_tokens=self.max_completion_tokens or self.max_tokens,
                temperature=self.temperature,
                top_p=self.top_p,
                seed=self.seed,
                stop=tuple(stop),
            ),
            strip_thinking=self.strip_thinking,
            top_logprobs=(self.top_logprobs or 0) if self.logprobs else None,
        )


class TopLogprobObject(BaseModel):
    """One of the most likely tokens at a position."""

    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobObject(BaseModel):
    """A sampled token with its logprob and the most likely alternatives at its position."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprobObject]

    @classmethod
    def of(cls, item: TokenLogprob) -> TokenLogprobObject:
        tops = [TopLogprobObject(token=t.token, logprob=t.logprob, bytes=_list(t.bytes)) for t in item.top]
        return cls(token=item.token, logprob=item.logprob, bytes=_list(item.bytes), top_logprobs=tops)


def _list(values: tuple[int, ...] | None) -> list[int] | None:
    return None if values is None else list(values)


class ChoiceLogprobs(BaseModel):
    """The logprobs of a choice's tokens, in order."""

    content: list[TokenLogprobObject]
    refusal: None = None

    @classmethod
    def of(cls, items: tuple[TokenLogprob, ...] | None) -> ChoiceLogprobs | None:
        return None if items is None else cls(content=[TokenLogprobObject.of(item) for item in items])


class AssistantMessage(BaseModel):
    """The answer's message."""

    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    """The one answer of a chat completion (``n`` is always 1)."""

    index: int = 0
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str


class Usage(BaseModel):
    """Token counts of a chat: prompt, completion and both."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, result: ChatResult) -> Usage:
        return cls(
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            total_tokens=result.prompt_tokens + result.completion_tokens,
        )


class ChatCompletion(BaseModel):
    """The answer of ``POST /v1/chat/completions`` without ``stream``."""

    id: str
    choices: list[Choice]
    created: int
    model: str
    object: Literal["chat.completion"] = "chat.completion"
    usage: Usage
    adapter: str | None = Field(None, description="Full name of the adapter that answered.")  # extension
    adapter_version: int = Field(0, description="Adapter version that answered; 0 for the base model.")  # extension

    @classmethod
    def of(cls, result: ChatResult) -> ChatCompletion:
        return cls(
            id=result.completion_id,
            choices=[
                Choice(
                    message=AssistantMessage(content=result.text),
                    logprobs=ChoiceLogprobs.of(result.logprobs),
                    finish_reason=result.finish_reason,
                )
            ],
            created=result.created,
            model=result.model,
            usage=Usage.of(result),
            adapter=result.adapter or None,
            adapter_version=result.version,
        )


class Delta(BaseModel):
    """The new part of a streamed answer."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    """The one choice of a streamed chunk."""

    index: int = 0
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion."""

    id: str
    choices: list[ChunkChoice]
    created: int
    model: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    usage: Usage | None = None
    adapter: str | None = None  # extension
    adapter_version: int = 0  # extension


class ModelCard(BaseModel):
    """A model the caller can chat with: the base model or one of its adapters."""

    id: str
    created: int
    object: Literal["model"] = "model"
    owned_by: str
    adapter_version: int = Field(0, description="Head version of an adapter; 0 for the base model.")  # extension

    @classmethod
    def of(cls, info: ModelInfo) -> ModelCard:
        return cls(id=info.id, created=info.created, owned_by=info.owned_by, adapter_version=info.version)


class ModelList(BaseModel):
    """The answer of ``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    """What went wrong: ``type`` is the kind of error, ``code`` the gRPC status in lower case."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope, the body of every failed request."""

    error: ErrorDetail


# The proxy's own routes (no OpenAI counterpart): feedback and adapters.


class FeedbackRequest(BaseModel):
    """The body of ``POST /v1/feedback``: feedback on completions of one adapter."""

    model_config = ConfigDict(extra="forbid")

    completion_ids: list[str]
    feedback: str
    config: dict[str, Any] | None = Field(None, description="SDPO overrides, field names as in SdpoConfig.")
    wait: bool = False
    idempotency_key: str = ""


class JobResponse(BaseModel):
    """A training job, as its feedback submit or its status left it."""

    job: JobObject


class FeedbackListResponse(BaseModel):
    """A page of the caller's feedback records, newest first; ``next_page_token`` (absent on the last page)
    asks for the next: ``?page_token=...`` (``?page_size=N``, ``?adapter=...``, ``?state=JOB_STATE_...``)."""

    records: list[FeedbackRecordObject]
    next_page_token: str | None = None


class AdapterCreateRequest(BaseModel):
    """The body of ``POST /v1/adapters``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    lora: dict[str, Any] | None = Field(None, description="rank, alpha, target_modules, dropout.")


class AdapterResponse(BaseModel):
    """One adapter."""

    adapter: AdapterObject


class AdapterListResponse(BaseModel):
    """The caller's adapters, by name."""

    adapters: list[AdapterObject]


class VersionListResponse(BaseModel):
    """A page of an adapter's committed versions with their lineage, oldest first; ``next_page_token`` (absent
    on the last page) asks for the next: ``?page_token=...`` (``?page_size=N`` sets the page's size)."""

    versions: list[VersionObject]
    next_page_token: str | None = None


class RollbackRequest(BaseModel):
    """The body of ``POST /v1/adapters/{name}/rollback``."""

    model_config = ConfigDict(extra="forbid")

    version: int


class DeleteResponse(BaseModel):
    """Whether there was anything to delete."""

    deleted: bool


class EvalFileResponse(BaseModel):
    """Ours: one file of an eval run kept (``PUT /v1/evals/{run_id}/{name}``)."""

    run_id: str
    name: str
    bytes: int
