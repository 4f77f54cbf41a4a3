"""vLLM's chat and text-completion answers read one way: the text, the exact token ids, the logprobs.

Both endpoints are asked for token ids (``return_token_ids``) and the sampled tokens' logprobs on every
request, since the rollout needs them whether or not the caller asked; what the caller asked for decides
only what is passed on (``top_logprobs`` alternatives, in the endpoint's own format).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import ClaasError
from services.proxy.domain import ChatRequest, CompletionRequest, Delta, Sampling, TokenLogprob, TopLogprob

Body = dict[str, Any]


@dataclass(frozen=True)
class Endpoint:
    """Where one kind of answer lives in vLLM's JSON."""

    path: str
    #: The new text of a choice (plain answer or streamed chunk).
    text: Callable[[Body], str | None]
    #: The logprobs of a choice's tokens.
    logprobs: Callable[[Body], list[TokenLogprob]]
    #: The prompt's token ids, from a plain answer or the first chunk of a stream.
    prompt_ids: Callable[[Body], list[int]]


def _bytes(value: Any) -> tuple[int, ...] | None:
    return None if value is None else tuple(value)


def _top(item: Body) -> TopLogprob:
    return TopLogprob(item["token"], item["logprob"], _bytes(item.get("bytes")))


def _chat_logprobs(choice: Body) -> list[TokenLogprob]:
    return [
        TokenLogprob(
            token=item["token"],
            logprob=item["logprob"],
            bytes=_bytes(item.get("bytes")),
            top=tuple(_top(top) for top in item.get("top_logprobs") or ()),
        )
        for item in (choice.get("logprobs") or {}).get("content") or ()
    ]


def _legacy_logprobs(choice: Body) -> list[TokenLogprob]:
    """OpenAI's legacy format: parallel lists of tokens, their logprobs and {token: logprob} alternatives."""
    legacy = choice.get("logprobs") or {}
    tokens, values = legacy.get("tokens") or [], legacy.get("token_logprobs") or []
    tops = legacy.get("top_logprobs") or [None] * len(tokens)
    return [
        TokenLogprob(token=token, logprob=value, top=tuple(TopLogprob(t, lp) for t, lp in (top or {}).items()))
        for token, value, top in zip(tokens, values, tops, strict=True)
    ]


CHAT = Endpoint(
    path="/v1/chat/completions",
    text=lambda choice: (choice.get("message") or choice.get("delta") or {}).get("content"),
    logprobs=_chat_logprobs,
    prompt_ids=lambda body: list(body.get("prompt_token_ids") or ()),
)

TEXT = Endpoint(
    path="/v1/completions",
    text=lambda choice: choice.get("text"),
    logprobs=_legacy_logprobs,
    # Text completions carry the prompt's ids in their (first) choice, not at the top.
    prompt_ids=lambda body: list(((body.get("choices") or [{}])[0]).get("prompt_token_ids") or ()),
)


@dataclass
class Collected:
    """What vLLM produced, gathered from one answer or from the chunks of a stream."""

    prompt_ids: list[int] = field(default_factory=list)
    response_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    finish_reason: str = ""

    def add_choice(self, endpoint: Endpoint, choice: Body) -> Delta:
        """Take in one choice; the new text and logprobs it brought."""
        text = endpoint.text(choice) or ""
        logprobs = endpoint.logprobs(choice)
        self.response_ids.extend(choice.get("token_ids") or ())
        self.logprobs.extend(logprobs)
        self.finish_reason = choice.get("finish_reason") or self.finish_reason
        self.text.append(text)
        return Delta(text, tuple(logprobs))

    @property
    def sampled_logprobs(self) -> list[float]:
        return [item.logprob for item in self.logprobs]

    def check(self) -> None:
        prompt, response, logprobs = len(self.prompt_ids), len(self.response_ids), len(self.logprobs)
        if not prompt or response != logprobs:
            raise ClaasError(
                f"vLLM's answer lacks token ids or logprobs ({prompt} prompt ids, {response} ids, {logprobs} logprobs)"
            )


def _sampling(payload: Body, sampling: Sampling, stream: bool) -> Body:
    payload["max_tokens"] = sampling.max_tokens
    optional = {"temperature": sampling.temperature, "top_p": sampling.top_p, "seed": sampling.seed}
    payload.update({k: v for k, v in optional.items() if v is not None})
    if sampling.stop:
        payload["stop"] = list(sampling.stop)
    if stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    return payload


def chat_payload(request: ChatRequest, sampling: Sampling, *, stream: bool = False) -> Body:
    """vLLM's chat request, without ``model`` (the served name is known only once the version is leased)."""
    payload: Body = {
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        # The rollout needs exactly what was sampled: token ids of prompt and answer, and their logprobs.
        "logprobs": True,
        "return_token_ids": True,
    }
    if request.top_logprobs:
        payload["top_logprobs"] = request.top_logprobs
    return _sampling(payload, sampling, stream)


def text_payload(request: CompletionRequest, sampling: Sampling, *, stream: bool = False) -> Body:
    """vLLM's text-completion request, without ``model``; logprobs 0 still gives the sampled tokens' own."""
    payload: Body = {"prompt": request.prompt, "logprobs": request.logprobs or 0, "return_token_ids": True}
    return _sampling(payload, sampling, stream)
