"""What a chat request may ask for; checked before anything is sent or written."""

from __future__ import annotations

from dataclasses import dataclass, replace

from services.common.errors import InvalidArgument
from services.proxy.domain import ROLES, ChatRequest, Sampling

MAX_STOP_SEQUENCES = 8


class RequestTooLarge(InvalidArgument):
    """Over a size limit: ``INVALID_ARGUMENT`` on gRPC, HTTP 413."""

    http_status = 413


@dataclass(frozen=True)
class ChatLimits:
    """The proxy's limits on one chat request (settings), checked before vLLM sees it."""

    default_max_tokens: int
    max_tokens_cap: int
    max_messages: int
    max_request_bytes: int

    def check(self, request: ChatRequest) -> Sampling:
        """The request's sampling with its defaults filled in, or the reason it is refused."""
        if not request.model.strip():
            raise InvalidArgument("'model' is required", param="model")
        self._check_messages(request)
        return self._check_sampling(request.sampling)

    def _check_messages(self, request: ChatRequest) -> None:
        if not request.messages:
            raise InvalidArgument("'messages' must hold at least one message", param="messages")
        if len(request.messages) > self.max_messages:
            raise RequestTooLarge(
                f"{len(request.messages)} messages, at most {self.max_messages} allowed", param="messages"
            )
        for index, message in enumerate(request.messages):
            if message.role not in ROLES:
                raise InvalidArgument(
                    f"messages[{index}].role {message.role!r} is not one of {', '.join(ROLES)}", param="messages"
                )
        size = sum(len(m.content.encode()) for m in request.messages)
        if size > self.max_request_bytes:
            raise RequestTooLarge(
                f"messages hold {size} bytes of text, at most {self.max_request_bytes} allowed", param="messages"
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
