"""Trainer protos <-> the trainer's domain types (samples, SDPO overrides, job views, Info).

Used by the servicer on one side and by ``client.py`` on the other; nothing else touches trainer protos.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from claas.v1 import common_pb2, trainer_pb2
from google.protobuf import json_format

from services.common.convert import (
    float32,
    messages_from_proto,
    messages_to_proto,
    step_metrics_from_proto,
    step_metrics_to_proto,
)
from services.common.errors import InvalidArgument
from services.storage.convert import adapter_to_proto, version_to_proto
from services.storage.domain import Adapter, Version
from services.trainer.domain import JobState, JobView, Sample, TrainerInfo

_TEACHER_MODES = {
    common_pb2.TEACHER_MODE_BASE: "base",
    common_pb2.TEACHER_MODE_SELF: "self",
    common_pb2.TEACHER_MODE_TRUST_REGION: "trust_region",
}
_JOB_STATES = {state: common_pb2.JobState.Value(f"JOB_STATE_{state.name}") for state in JobState}
_JOB_STATES_BACK = {value: state for state, value in _JOB_STATES.items()}


def job_state_to_proto(state: JobState) -> common_pb2.JobState:
    return _JOB_STATES[state]


def job_state_from_proto(value: common_pb2.JobState) -> JobState | None:
    """The state, or None for JOB_STATE_UNSPECIFIED (and values this build does not know)."""
    return _JOB_STATES_BACK.get(value)


def sample_to_proto(sample: Sample) -> trainer_pb2.TrainSample:
    return trainer_pb2.TrainSample(
        completion_id=sample.completion_id,
        messages=messages_to_proto(sample.messages),
        prompt_ids=list(sample.prompt_ids),
        response_ids=list(sample.response_ids),
        sampled_logprobs=list(sample.sampled_logprobs),
        feedback=sample.feedback,
        served_version=sample.served_version,
    )


def sample_from_proto(proto: trainer_pb2.TrainSample) -> Sample:
    return Sample(
        completion_id=proto.completion_id,
        messages=messages_from_proto(proto.messages),
        prompt_ids=tuple(proto.prompt_ids),
        response_ids=tuple(proto.response_ids),
        sampled_logprobs=tuple(proto.sampled_logprobs),
        feedback=proto.feedback,
        served_version=proto.served_version,
    )


def samples_from_proto(protos: Iterable[trainer_pb2.TrainSample]) -> tuple[Sample, ...]:
    return tuple(sample_from_proto(p) for p in protos)


def config_to_proto(overrides: Mapping[str, Any] | None) -> common_pb2.SdpoConfig | None:
    """SDPO overrides keyed by ``common.proto``'s field names, values as proto JSON (the HTTP API's
    ``config`` object); unknown names and ill-typed values are refused."""
    if not overrides:
        return None
    try:
        return json_format.ParseDict(dict(overrides), common_pb2.SdpoConfig())
    except json_format.ParseError as exc:
        raise InvalidArgument(f"invalid config: {exc}", param="config") from None


def config_from_proto(proto: common_pb2.SdpoConfig) -> dict[str, object]:
    """The fields the request set, for ``SdpoConfig.with_overrides`` (unset ones are left out).

    float32 values are rounded to 7 significant digits, so 2e-4 stays 2e-4 rather than 0.000199999995.
    """
    overrides: dict[str, object] = {}
    for field in proto.DESCRIPTOR.fields:
        if not proto.HasField(field.name):
            continue
        value = getattr(proto, field.name)
        if field.name == "teacher_mode":
            if value == common_pb2.TEACHER_MODE_UNSPECIFIED:
                continue
            if value not in _TEACHER_MODES:
                name = common_pb2.TeacherMode.Name(value) if value in common_pb2.TeacherMode.values() else value
                raise InvalidArgument(
                    f"teacher_mode must be BASE, SELF or TRUST_REGION, got {name}", param="teacher_mode"
                )
            value = _TEACHER_MODES[value]
        elif field.type == field.TYPE_FLOAT:
            value = float32(value)
        overrides[field.name] = value
    return overrides


def job_view_to_proto(view: JobView) -> common_pb2.JobStatus:
    return common_pb2.JobStatus(
        job_id=view.job_id,
        adapter=view.adapter,
        state=job_state_to_proto(view.state),
        base_version=view.base_version,
        new_version=view.new_version,
        step=view.step,
        total_steps=view.total_steps,
        metrics=[step_metrics_to_proto(m) for m in view.metrics],
        error=view.error,
        merged_job_ids=list(view.merged_job_ids),
        teacher_texts=view.teacher_texts,
    )


def job_view_from_proto(proto: common_pb2.JobStatus) -> JobView:
    return JobView(
        job_id=proto.job_id,
        adapter=proto.adapter,
        state=job_state_from_proto(proto.state) or JobState.QUEUED,
        base_version=proto.base_version,
        new_version=proto.new_version,
        step=proto.step,
        total_steps=proto.total_steps,
        metrics=tuple(step_metrics_from_proto(m) for m in proto.metrics),
        error=proto.error,
        merged_job_ids=tuple(proto.merged_job_ids),
        teacher_texts=dict(proto.teacher_texts),
    )


def info_to_proto(info: TrainerInfo) -> trainer_pb2.TrainerServiceInfoResponse:
    return trainer_pb2.TrainerServiceInfoResponse(
        model_id=info.model_id,
        tokenizer_fingerprint=info.tokenizer_fingerprint,
        device=info.device,
        queue_depth=info.queue_depth,
        max_queue=info.max_queue,
        max_lora_rank=info.max_lora_rank,
    )


def info_from_proto(proto: trainer_pb2.TrainerServiceInfoResponse) -> TrainerInfo:
    return TrainerInfo(
        model_id=proto.model_id,
        tokenizer_fingerprint=proto.tokenizer_fingerprint,
        device=proto.device,
        queue_depth=proto.queue_depth,
        max_queue=proto.max_queue,
        max_lora_rank=proto.max_lora_rank,
    )


def init_response_to_proto(adapter: Adapter, version: Version) -> trainer_pb2.InitAdapterResponse:
    return trainer_pb2.InitAdapterResponse(adapter=adapter_to_proto(adapter), version=version_to_proto(version))
