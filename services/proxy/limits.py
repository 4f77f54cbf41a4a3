"""What a chat request may ask for; checked before anything is sent or written."""

from __future__ import annotations

from dataclasses import dataclass, replace

from services.common.domain import Message
from services.common.errors import InvalidArgument, RequestTooLarge
from services.common.naming import check_version
from services.proxy.domain import ROLES, ChatRequest, CompletionRequest, Sampling, ScoreRequest

MAX_STOP_SEQUENCES = 8
#: OpenAI's ranges: chat's ``top_logprobs`` 0..20, text completions' legacy ``logprobs`` 0..5.
MAX_TOP_LOGPROBS = 20
MAX_LEGACY_LOGPROBS = 5


@dataclass(frozen=True)
class ChatLimits:
    """The proxy's limits on one chat request (settings), checked before vLLM sees it."""

    default_max_tokens: int
    max_tokens_cap: int
    max_messages: int
    max_request_bytes: int

    def check(self, request: ChatRequest) -> Sampling:
        """The request's sampling with its defaults filled in, or the reason it is refused."""
        _check_model(request.model)
        self.check_messages(request.messages)
        if not any(m.role == "user" for m in request.messages):
            # Its answer could never take feedback (the feedback goes after the last user turn): refuse now,
            # not when the user gives it.
            raise InvalidArgument("a chat needs at least one user message", param="messages")
        _check_top(request.top_logprobs, MAX_TOP_LOGPROBS, "top_logprobs")
        if request.strip_thinking and request.top_logprobs is not None:
            # The logprobs cover every token, the text would not: refuse rather than hand back a mismatch.
            raise InvalidArgument("logprobs cannot be combined with strip_thinking", param="logprobs")
        return self._check_sampling(request.sampling)

    def check_completion(self, request: CompletionRequest) -> Sampling:
        """A text completion's sampling with its defaults filled in, or the reason it is refused."""
        _check_model(request.model)
        if not request.prompt:
            raise InvalidArgument("'prompt' must not be empty", param="prompt")
        self._check_size(len(request.prompt.encode()), "prompt")
        _check_top(request.logprobs, MAX_LEGACY_LOGPROBS, "logprobs")
        return self._check_sampling(request.sampling)

    def check_score(self, request: ScoreRequest) -> None:
        """A score's conversation and completion within the chat limits (the token count is checked once
        vLLM has tokenised them, against ``max_tokens_cap`` and the model's context)."""
        _check_model(request.model)
        self.check_messages(request.messages, extra_bytes=len(request.completion.encode()))
        check_version(request.version, zero="the head")

    def check_messages(self, messages: tuple[Message, ...], *, extra_bytes: int = 0) -> None:
        if not messages:
            raise InvalidArgument("'messages' must hold at least one message", param="messages")
        if len(messages) > self.max_messages:
            raise RequestTooLarge(f"{len(messages)} messages, at most {self.max_messages} allowed", param="messages")
        for index, message in enumerate(messages):
            if message.role not in ROLES:
                raise InvalidArgument(
                    f"messages[{index}].role {message.role!r} is not one of {', '.join(ROLES)}", param="messages"
                )
        self._check_size(sum(len(m.content.encode()) for m in messages) + extra_bytes, "messages")

    def _check_size(self, size: int, param: str) -> None:
        if size > self.max_request_bytes:
            raise RequestTooLarge(
                f"{param} hold {size} bytes of text, at most {self.max_request_bytes} allowed", param=param
            )

    def _check_sampling(self, sampling: Sampling) -> Sampling:
        max_tokens = sampling.max_tokens or self.default_max_tokens
        if max_tokens < 0:
            raise InvalidArgument(f"max_tokens must be positive, got {max_tokens}", param="max_tokens")
        if max_tokens > self.max_tokens_cap:
            raise RequestTooLarge(
                f"max_tokens {max_tokens} is over the limit of {self.max_tokens_cap}", param="max_tokens"
            )
        if sampling.temperature is not None and not 0 <= sampling.temperature <= 2:
            raise InvalidArgument(f"temperature must be in [0, 2], got {sampling.temperature}", param="temperature")
        if sampling.top_p is not None and not 0 < sampling.top_p <= 1:
            raise InvalidArgument(f"top_p must be in (0, 1], got {sampling.top_p}", param="top_p")
        if len(sampling.stop) > MAX_STOP_SEQUENCES or any(not s for s in sampling.stop):
            raise InvalidArgument(
                f"stop takes 1 to {MAX_STOP_SEQUENCES} non-empty sequences, got {list(sampling.stop)}", param="stop"
            )
        return replace(sampling, max_tokens=max_tokens)


def _check_model(model: str) -> None:
    if not model.strip():
        raise InvalidArgument("'model' is required", param="model")


def _check_top(value: int | None, most: int, param: str) -> None:
    if value is not None and not 0 <= value <= most:
        raise InvalidArgument(f"{param} must be in [0, {most}], got {value}", param=param)
