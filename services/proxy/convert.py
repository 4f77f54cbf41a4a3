"""Proxy protos <-> the proxy's domain types, both ways: the servicer sends what ``client.py`` receives.

Adapters, versions and jobs travel in storage's and the trainer's messages; their converters are reused
from those services. Nothing else in the proxy touches a proto (the HTTP surface has its own JSON models).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from claas.v1 import common_pb2, peer_pb2, proxy_pb2
from google.protobuf import json_format

from services.common.convert import (
    float32,
    lora_from_proto,
    messages_from_proto,
    messages_to_proto,
    step_metrics_from_proto,
    step_metrics_to_proto,
    timestamp_from_proto,
    timestamp_to_proto,
)
from services.common.domain import LoraSpec
from services.common.errors import DataLoss, InvalidArgument
from services.common.naming import owner_of
from services.proxy.audit import AuditSample, FeedbackRecord
from services.proxy.domain import (
    Busy,
    ChatRequest,
    ChatResult,
    CompletionRequest,
    Delta,
    PeerCall,
    PeerEvent,
    Preload,
    Preloaded,
    Sampling,
    ScoreRequest,
    ScoreResult,
    Started,
    TokenLogprob,
    TopLogprob,
)
from services.storage.convert import adapter_from_proto, version_from_proto, version_to_proto
from services.storage.domain import Chunk, Version
from services.trainer.convert import (
    config_to_proto,
    job_state_from_proto,
    job_state_to_proto,
    job_view_from_proto,
    job_view_to_proto,
)
from services.trainer.domain import JobState

__all__ = [
    "adapter_from_proto",
    "config_to_proto",
    "job_view_from_proto",
    "job_view_to_proto",
    "lora_from_proto",
    "version_from_proto",
    "version_to_proto",
]

ChatRequestProto = proxy_pb2.ChatRequest | proxy_pb2.ChatStreamRequest


def sampling_to_proto(sampling: Sampling) -> proxy_pb2.SamplingParams:
    optional = {"temperature": sampling.temperature, "top_p": sampling.top_p, "seed": sampling.seed}
    return proxy_pb2.SamplingParams(
        max_tokens=sampling.max_tokens or 0,
        stop=list(sampling.stop),
        **{name: value for name, value in optional.items() if value is not None},
    )


def sampling_from_proto(sampling: proxy_pb2.SamplingParams) -> Sampling:
    return Sampling(
        max_tokens=sampling.max_tokens or None,
        temperature=sampling.temperature if sampling.HasField("temperature") else None,
        top_p=sampling.top_p if sampling.HasField("top_p") else None,
        seed=sampling.seed if sampling.HasField("seed") else None,
        stop=tuple(sampling.stop),
    )


def chat_request_to_proto(request: ChatRequest, *, stream: bool = False) -> ChatRequestProto:
    kind = proxy_pb2.ChatStreamRequest if stream else proxy_pb2.ChatRequest
    return kind(
        model=request.model,
        messages=messages_to_proto(request.messages),
        sampling=sampling_to_proto(request.sampling),
        strip_thinking=request.strip_thinking,
    )


def chat_request_from_proto(request: ChatRequestProto) -> ChatRequest:
    return ChatRequest(
        model=request.model,
        messages=messages_from_proto(request.messages),
        sampling=sampling_from_proto(request.sampling),
        strip_thinking=request.strip_thinking,
    )


def chat_result_to_proto(result: ChatResult) -> proxy_pb2.ChatResponse:
    return proxy_pb2.ChatResponse(
        completion_id=result.completion_id,
        text=result.text,
        adapter=result.adapter,
        version=result.version,
        usage=proxy_pb2.Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens),
        finish_reason=result.finish_reason,
    )


def chat_result_from_proto(response: proxy_pb2.ChatResponse, model: str) -> ChatResult:
    """``model`` is what was asked for; the answer names the adapter (empty for the base model)."""
    return ChatResult(
        completion_id=response.completion_id,
        model=response.adapter or model,
        text=response.text,
        adapter=response.adapter,
        version=response.version,
        prompt_tokens=response.usage.prompt_tokens,
        completion_tokens=response.usage.completion_tokens,
        finish_reason=response.finish_reason,
        created=0,  # not part of the gRPC answer
    )


def score_request_to_proto(request: ScoreRequest) -> proxy_pb2.InferenceServiceScoreRequest:
    return proxy_pb2.InferenceServiceScoreRequest(
        model=request.model,
        messages=messages_to_proto(request.messages),
        completion=request.completion,
        version=request.version,
    )


def score_request_from_proto(request: proxy_pb2.InferenceServiceScoreRequest) -> ScoreRequest:
    return ScoreRequest(
        model=request.model,
        messages=messages_from_proto(request.messages),
        completion=request.completion,
        version=request.version,
    )


def score_result_to_proto(result: ScoreResult) -> proxy_pb2.InferenceServiceScoreResponse:
    return proxy_pb2.InferenceServiceScoreResponse(
        model=result.model,
        adapter=result.adapter,
        version=result.version,
        tokens=list(result.tokens),
        token_ids=list(result.token_ids),
        logprobs=list(result.logprobs),
        logprob_sum=result.logprob_sum,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
    )


def score_result_from_proto(response: proxy_pb2.InferenceServiceScoreResponse) -> ScoreResult:
    return ScoreResult(
        model=response.model,
        adapter=response.adapter,
        version=response.version,
        tokens=tuple(response.tokens),
        token_ids=tuple(response.token_ids),
        logprobs=tuple(response.logprobs),
        prompt_tokens=response.prompt_tokens,
    )


def config_from_proto(config: common_pb2.SdpoConfig) -> dict[str, Any]:
    """The request's SDPO overrides as the mapping the core passes on (field names as in common.proto, values
    as proto JSON). float32 values keep only the digits they hold, so ``learning_rate`` 1e-4 reads 0.0001 as
    it does over HTTP (and derives the same job key)."""
    overrides = json_format.MessageToDict(config, preserving_proto_field_name=True)
    floats = {f.name for f in config.DESCRIPTOR.fields if f.type == f.TYPE_FLOAT}
    return {name: float32(value) if name in floats else value for name, value in overrides.items()}


def lora_from_json(body: Mapping[str, Any] | None) -> LoraSpec | None:
    """A LoRA shape from JSON (field names as in common.proto); unknown names are refused."""
    if not body:
        return None
    try:
        return lora_from_proto(json_format.ParseDict(dict(body), common_pb2.LoraSpec()))
    except json_format.ParseError as exc:
        raise InvalidArgument(f"invalid lora: {exc}", param="lora") from None


async def export_to_proto(
    header: Version, chunks: AsyncIterator[Chunk]
) -> AsyncIterator[proxy_pb2.AdaptersServiceExportResponse]:
    """The header, then each chunk of its files as it comes."""
    yield proxy_pb2.AdaptersServiceExportResponse(header=version_to_proto(header))
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            message = common_pb2.FileChunk(path=chunk.path, offset=chunk.offset, data=chunk.data)
            yield proxy_pb2.AdaptersServiceExportResponse(chunk=message)


async def export_from_proto(
    responses: AsyncIterator[proxy_pb2.AdaptersServiceExportResponse],
) -> tuple[Version, dict[str, bytes]]:
    """The header and the files of an export, each checked against its size and SHA-256."""
    header: Version | None = None
    parts: dict[str, bytearray] = {}
    async for response in responses:
        if response.HasField("header"):
            header = version_from_proto(response.header)
        else:
            parts.setdefault(response.chunk.path, bytearray()).extend(response.chunk.data)
    if header is None:
        raise DataLoss("the proxy sent no version header")
    files = {entry.path: bytes(parts.get(entry.path, b"")) for entry in header.files}
    for entry in header.files:
        data = files[entry.path]
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise DataLoss(f"{entry.path}: checksum mismatch")
    return header, files


def state_filter_from_proto(value: int) -> JobState | None:
    """A list's state filter: None for JOB_STATE_UNSPECIFIED (any state)."""
    state = job_state_from_proto(value)
    if value and state is None:
        raise InvalidArgument(f"unknown state {value}", param="state")
    return state


def record_to_proto(record: FeedbackRecord) -> proxy_pb2.FeedbackRecord:
    return proxy_pb2.FeedbackRecord(
        record_id=record.record_id,
        adapter=record.adapter,
        feedback=record.feedback,
        samples=[
            proxy_pb2.FeedbackSample(
                completion_id=s.completion_id,
                messages=messages_to_proto(s.messages),
                response=s.response,
                served_version=s.served_version,
                teacher_text=s.teacher_text,
            )
            for s in record.samples
        ],
        submitted_at=timestamp_to_proto(record.submitted_at),
        job_id=record.job_id,
        state=job_state_to_proto(record.state),
        base_version=record.base_version,
        new_version=record.new_version,
        metrics=[step_metrics_to_proto(m) for m in record.metrics],
        error=record.error,
        phase_seconds=record.phases,
    )


def record_from_proto(proto: proxy_pb2.FeedbackRecord, tenant: str = "") -> FeedbackRecord:
    samples = tuple(
        AuditSample(s.completion_id, messages_from_proto(s.messages), s.response, s.served_version, s.teacher_text)
        for s in proto.samples
    )
    return FeedbackRecord(
        record_id=proto.record_id,
        tenant=tenant or owner_of(proto.adapter),
        adapter=proto.adapter,
        feedback=proto.feedback,
        samples=samples,
        submitted_at=timestamp_from_proto(proto.submitted_at),
        job_id=proto.job_id,
        state=job_state_from_proto(proto.state) or JobState.QUEUED,
        base_version=proto.base_version,
        new_version=proto.new_version,
        metrics=tuple(step_metrics_from_proto(m) for m in proto.metrics),
        error=proto.error,
        phases=dict(proto.phase_seconds),
    )


# Between proxy replicas (peer.proto): every field of the domain types travels, so a forwarded call is the
# call itself and its answer the answer itself.


def _peer_sampling_to_proto(sampling: Sampling) -> peer_pb2.PeerSampling:
    optional = {
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "seed": sampling.seed,
    }
    return peer_pb2.PeerSampling(
        stop=list(sampling.stop), **{name: value for name, value in optional.items() if value is not None}
    )


def _peer_sampling_from_proto(sampling: peer_pb2.PeerSampling) -> Sampling:
    def optional(name: str) -> Any:
        return getattr(sampling, name) if sampling.HasField(name) else None

    return Sampling(
        max_tokens=optional("max_tokens"),
        temperature=optional("temperature"),
        top_p=optional("top_p"),
        seed=optional("seed"),
        stop=tuple(sampling.stop),
    )


def peer_request_to_proto(
    tenant: str, call: PeerCall, *, stream: bool, may_refuse: bool
) -> peer_pb2.ProxyPeerServiceServeRequest:
    request = peer_pb2.ProxyPeerServiceServeRequest(tenant=tenant, stream=stream, may_refuse=may_refuse)
    if isinstance(call, ChatRequest):
        request.chat.CopyFrom(
            peer_pb2.PeerChat(
                model=call.model,
                messages=messages_to_proto(call.messages),
                sampling=_peer_sampling_to_proto(call.sampling),
                strip_thinking=call.strip_thinking,
                top_logprobs=call.top_logprobs,
            )
        )
    elif isinstance(call, CompletionRequest):
        request.completion.CopyFrom(
            peer_pb2.PeerCompletion(
                model=call.model,
                prompt=call.prompt,
                sampling=_peer_sampling_to_proto(call.sampling),
                logprobs=call.logprobs,
            )
        )
    elif isinstance(call, ScoreRequest):
        request.score.CopyFrom(
            peer_pb2.PeerScore(
                model=call.model,
                messages=messages_to_proto(call.messages),
                completion=call.completion,
                version=call.version,
            )
        )
    else:
        request.preload.CopyFrom(
            peer_pb2.PeerPreload(adapter=call.adapter, version=call.version, generation=call.generation)
        )
    return request


def peer_request_from_proto(request: peer_pb2.ProxyPeerServiceServeRequest) -> PeerCall:
    kind = request.WhichOneof("call")
    if kind == "chat":
        chat = request.chat
        return ChatRequest(
            model=chat.model,
            messages=messages_from_proto(chat.messages),
            sampling=_peer_sampling_from_proto(chat.sampling),
            strip_thinking=chat.strip_thinking,
            top_logprobs=chat.top_logprobs if chat.HasField("top_logprobs") else None,
        )
    if kind == "completion":
        text = request.completion
        return CompletionRequest(
            model=text.model,
            prompt=text.prompt,
            sampling=_peer_sampling_from_proto(text.sampling),
            logprobs=text.logprobs if text.HasField("logprobs") else None,
        )
    if kind == "score":
        score = request.score
        return ScoreRequest(
            model=score.model,
            messages=messages_from_proto(score.messages),
            completion=score.completion,
            version=score.version,
        )
    if kind == "preload":
        preload = request.preload
        return Preload(preload.adapter, preload.version, preload.generation)
    raise InvalidArgument("a forwarded call names no chat, completion, score or preload", param="call")


def _utf8(value: tuple[int, ...] | None) -> dict[str, bytes]:
    return {} if value is None else {"utf8": bytes(value)}


def _logprobs_to_proto(logprobs: tuple[TokenLogprob, ...]) -> list[peer_pb2.PeerTokenLogprob]:
    return [
        peer_pb2.PeerTokenLogprob(
            token=item.token,
            logprob=item.logprob,
            top=[peer_pb2.PeerTopLogprob(token=t.token, logprob=t.logprob, **_utf8(t.bytes)) for t in item.top],
            **_utf8(item.bytes),
        )
        for item in logprobs
    ]


def _logprobs_from_proto(logprobs: Any) -> tuple[TokenLogprob, ...]:
    def utf8(message: Any) -> tuple[int, ...] | None:
        return tuple(message.utf8) if message.HasField("utf8") else None

    return tuple(
        TokenLogprob(
            token=item.token,
            logprob=item.logprob,
            bytes=utf8(item),
            top=tuple(TopLogprob(t.token, t.logprob, utf8(t)) for t in item.top),
        )
        for item in logprobs
    )


def peer_event_to_proto(event: PeerEvent) -> peer_pb2.ProxyPeerServiceServeResponse:
    response = peer_pb2.ProxyPeerServiceServeResponse
    if isinstance(event, Busy):
        return response(busy=peer_pb2.PeerBusy(in_flight=event.in_flight))
    if isinstance(event, Started):
        return response(started=peer_pb2.PeerStarted(**dataclasses.asdict(event)))  # the same fields
    if isinstance(event, Delta):
        return response(delta=peer_pb2.PeerDelta(text=event.text, logprobs=_logprobs_to_proto(event.logprobs)))
    if isinstance(event, ChatResult):
        return response(
            result=peer_pb2.PeerResult(
                completion_id=event.completion_id,
                model=event.model,
                text=event.text,
                adapter=event.adapter,
                version=event.version,
                prompt_tokens=event.prompt_tokens,
                completion_tokens=event.completion_tokens,
                finish_reason=event.finish_reason,
                created=event.created,
                has_logprobs=event.logprobs is not None,
                logprobs=_logprobs_to_proto(event.logprobs or ()),
            )
        )
    if isinstance(event, ScoreResult):
        return response(score=peer_pb2.PeerScoreResult(**dataclasses.asdict(event)))  # the same fields
    return response(preloaded=peer_pb2.PeerPreloaded())


def peer_event_from_proto(response: peer_pb2.ProxyPeerServiceServeResponse) -> PeerEvent:
    kind = response.WhichOneof("event")
    if kind == "busy":
        return Busy(response.busy.in_flight)
    if kind == "started":
        s = response.started
        return Started(s.completion_id, s.model, s.adapter, s.version, s.created)
    if kind == "delta":
        return Delta(response.delta.text, _logprobs_from_proto(response.delta.logprobs))
    if kind == "result":
        r = response.result
        return ChatResult(
            completion_id=r.completion_id,
            model=r.model,
            text=r.text,
            adapter=r.adapter,
            version=r.version,
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            finish_reason=r.finish_reason,
            created=r.created,
            logprobs=_logprobs_from_proto(r.logprobs) if r.has_logprobs else None,
        )
    if kind == "score":
        return score_result_from_proto(response.score)  # type: ignore[arg-type]
    if kind == "preloaded":
        return Preloaded()
    raise DataLoss("a proxy replica sent an empty event")
