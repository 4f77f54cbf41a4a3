"""Teacher protos <-> the teacher's domain types, both ways: the servicer reads what the client writes."""

from __future__ import annotations

import numpy as np
from claas.v1 import common_pb2, teacher_pb2

from services.common.convert import messages_from_proto, messages_to_proto
from services.common.errors import ClaasError, InvalidArgument
from services.teacher.domain import (
    AdapterRef,
    ScoreItem,
    ScoreRequest,
    ScoreResult,
    TeacherInfo,
    TeacherMode,
    TokenDistributions,
)

_MODES = {
    common_pb2.TEACHER_MODE_UNSPECIFIED: TeacherMode.BASE,
    common_pb2.TEACHER_MODE_BASE: TeacherMode.BASE,
    common_pb2.TEACHER_MODE_SELF: TeacherMode.SELF,
    common_pb2.TEACHER_MODE_TRUST_REGION: TeacherMode.TRUST_REGION,
    common_pb2.TEACHER_MODE_REMOTE: TeacherMode.REMOTE,
}
_MODE_PROTOS = {
    TeacherMode.BASE: common_pb2.TEACHER_MODE_BASE,
    TeacherMode.SELF: common_pb2.TEACHER_MODE_SELF,
    TeacherMode.TRUST_REGION: common_pb2.TEACHER_MODE_TRUST_REGION,
    TeacherMode.REMOTE: common_pb2.TEACHER_MODE_REMOTE,
}


def score_request_to_proto(request: ScoreRequest) -> teacher_pb2.ScoreRequest:
    adapter = None
    if request.adapter is not None:
        adapter = common_pb2.AdapterRef(name=request.adapter.name, version=request.adapter.version)
    return teacher_pb2.ScoreRequest(
        items=[_item_to_proto(item) for item in request.items],
        top_k=request.top_k,
        mode=_MODE_PROTOS[request.mode],
        adapter=adapter,
        trust_region_mu=request.mu,
        template=request.template,
    )


def score_request_from_proto(request: teacher_pb2.ScoreRequest) -> ScoreRequest:
    mode = _MODES.get(request.mode)
    if mode is None:
        raise InvalidArgument(f"unknown teacher mode {request.mode}", param="mode")
    adapter = None
    if request.HasField("adapter") and request.adapter.name:
        adapter = AdapterRef(request.adapter.name, request.adapter.version)
    return ScoreRequest(
        items=tuple(_item_from_proto(item) for item in request.items),
        top_k=request.top_k,
        mode=mode,
        adapter=adapter,
        mu=request.trust_region_mu,
        template=request.template,
    )


def _item_to_proto(item: ScoreItem) -> teacher_pb2.ScoreItem:
    return teacher_pb2.ScoreItem(
        messages=messages_to_proto(item.messages),
        feedback=item.feedback,
        response_ids=list(item.response_ids),
        support_ids=list(item.support_ids),
        support_k=item.support_k,
        neutral_followup=item.neutral_followup,
    )


def _item_from_proto(item: teacher_pb2.ScoreItem) -> ScoreItem:
    return ScoreItem(
        messages=messages_from_proto(item.messages),
        feedback=item.feedback,
        response_ids=tuple(item.response_ids),
        support_ids=tuple(item.support_ids),
        support_k=item.support_k,
        neutral_followup=item.neutral_followup,
    )


def distributions_to_proto(d: TokenDistributions) -> teacher_pb2.TokenDistributions:
    return teacher_pb2.TokenDistributions(
        k=d.k,
        ids=d.ids.ravel().tolist(),
        logprobs=d.logprobs.ravel().tolist(),
        sampled_logprobs=d.sampled_logprobs.tolist(),
        tail_logprobs=d.tail_logprobs.tolist(),
    )


def distributions_from_proto(message: teacher_pb2.TokenDistributions) -> TokenDistributions:
    """Arrays shaped [T, K] and [T] again; a K that does not divide the values is a malformed answer."""
    k = message.k
    if k < 1 or len(message.ids) % k or len(message.logprobs) != len(message.ids):
        raise ClaasError(
            f"teacher sent malformed distributions: K={k}, {len(message.ids)} ids, {len(message.logprobs)} logprobs"
        )
    return TokenDistributions(
        ids=np.asarray(message.ids, dtype=np.int32).reshape(-1, k),
        logprobs=np.asarray(message.logprobs, dtype=np.float32).reshape(-1, k),
        sampled_logprobs=np.asarray(message.sampled_logprobs, dtype=np.float32),
        tail_logprobs=np.asarray(message.tail_logprobs, dtype=np.float32),
    )


def score_response_to_proto(results: list[ScoreResult]) -> teacher_pb2.ScoreResponse:
    response = teacher_pb2.ScoreResponse()
    for result in results:
        out = response.results.add(teacher_prompt=result.teacher_prompt, prompt_tokens=result.prompt_tokens)
        out.teacher.CopyFrom(distributions_to_proto(result.teacher))
        if result.neutral is not None:
            out.neutral.CopyFrom(distributions_to_proto(result.neutral))
    return response


def score_response_from_proto(response: teacher_pb2.ScoreResponse) -> list[ScoreResult]:
    return [
        ScoreResult(
            teacher=distributions_from_proto(r.teacher),
            neutral=distributions_from_proto(r.neutral) if r.HasField("neutral") else None,
            teacher_prompt=r.teacher_prompt,
            prompt_tokens=r.prompt_tokens,
        )
        for r in response.results
    ]


def info_to_proto(info: TeacherInfo) -> teacher_pb2.TeacherServiceInfoResponse:
    return teacher_pb2.TeacherServiceInfoResponse(
        model_id=info.model_id,
        tokenizer_fingerprint=info.tokenizer_fingerprint,
        backend=info.backend,
        max_top_k=info.max_top_k,
        vocab_size=info.vocab_size,
        max_context=info.max_context,
    )


def info_from_proto(info: teacher_pb2.TeacherServiceInfoResponse) -> TeacherInfo:
    return TeacherInfo(
        model_id=info.model_id,
        tokenizer_fingerprint=info.tokenizer_fingerprint,
        backend=info.backend,
        max_top_k=info.max_top_k,
        vocab_size=info.vocab_size,
        max_context=info.max_context,
    )
