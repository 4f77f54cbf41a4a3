"""Proto messages <-> the trainer's own types (samples, configs, job views, teacher targets, lineage)."""

from __future__ import annotations

import torch
from claas.v1 import common_pb2, storage_pb2, teacher_pb2, trainer_pb2

from services.common.errors import ClaasError, InvalidArgument
from services.trainer.batching import Distributions, Targets
from services.trainer.config import SdpoConfig
from services.trainer.domain import JobState, JobView, LoraShape, Message, Sample, StepResult

_TEACHER_MODES = {
    common_pb2.TEACHER_MODE_BASE: "base",
    common_pb2.TEACHER_MODE_SELF: "self",
    common_pb2.TEACHER_MODE_TRUST_REGION: "trust_region",
}
_TEACHER_MODE_PROTOS = {name: value for value, name in _TEACHER_MODES.items()}
_JOB_STATES = {state: common_pb2.JobState.Value(f"JOB_STATE_{state.name}") for state in JobState}


def samples(protos: list[trainer_pb2.TrainSample]) -> tuple[Sample, ...]:
    return tuple(
        Sample(
            completion_id=p.completion_id,
            messages=tuple(Message(role=m.role, content=m.content) for m in p.messages),
            prompt_ids=tuple(p.prompt_ids),
            response_ids=tuple(p.response_ids),
            sampled_logprobs=tuple(p.sampled_logprobs),
            feedback=p.feedback,
            served_version=p.served_version,
        )
        for p in protos
    )


def config_overrides(proto: common_pb2.SdpoConfig) -> dict[str, object]:
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
            value = float(f"{value:.7g}")
        overrides[field.name] = value
    return overrides


def lora_shape(spec: common_pb2.LoraSpec) -> LoraShape:
    return LoraShape(
        rank=spec.rank,
        alpha=spec.alpha,
        targets=tuple(spec.target_modules),
        dropout=float(f"{spec.dropout:.7g}"),
    )


def lora_spec(shape: LoraShape) -> common_pb2.LoraSpec:
    return common_pb2.LoraSpec(
        rank=shape.rank, alpha=shape.alpha, target_modules=list(shape.targets), dropout=shape.dropout
    )


def step_metrics(result: StepResult) -> common_pb2.StepMetrics:
    return common_pb2.StepMetrics(
        step=result.step,
        loss=result.loss,
        distill_loss=result.distill_loss,
        kl=result.kl,
        mean_is_ratio=result.mean_is_ratio,
        clip_fraction=result.clip_fraction,
        grad_norm=result.grad_norm,
        tokens=result.tokens,
        teacher_student_gap=result.teacher_student_gap,
    )


def job_status(view: JobView) -> common_pb2.JobStatus:
    return common_pb2.JobStatus(
        job_id=view.job_id,
        adapter=view.adapter,
        state=_JOB_STATES[view.state],
        base_version=view.base_version,
        new_version=view.new_version,
        step=view.step,
        total_steps=view.total_steps,
        metrics=[step_metrics(m) for m in view.metrics],
        error=view.error,
        merged_job_ids=list(view.merged_job_ids),
    )


def lineage(
    *, job_id: str, job_ids: tuple[str, ...], samples: tuple[Sample, ...], results: list[StepResult]
) -> common_pb2.Lineage:
    extra = {"source": "sdpo"}
    if len(job_ids) > 1:
        extra["merged_job_ids"] = ",".join(job_ids)
    return common_pb2.Lineage(
        job_id=job_id,
        completion_ids=[s.completion_id for s in samples],
        feedback=[s.feedback for s in samples],
        metrics=[step_metrics(r) for r in results],
        extra=extra,
    )


def score_request(
    samples: tuple[Sample, ...],
    config: SdpoConfig,
    adapter: common_pb2.AdapterRef,
    support: list[torch.Tensor] | None = None,
) -> teacher_pb2.ScoreRequest:
    """The teacher's request: one item per sample, with the neutral follow-up when the config is contrastive.

    ``support``: per sample [T, K] ids to score at instead of the teacher's top-K.
    """
    items = []
    for i, sample in enumerate(samples):
        item = teacher_pb2.ScoreItem(
            messages=[common_pb2.ChatMessage(role=m.role, content=m.content) for m in sample.messages],
            feedback=sample.feedback,
            response_ids=list(sample.response_ids),
        )
        if support is not None:
            item.support_ids.extend(support[i].reshape(-1).tolist())
            item.support_k = int(support[i].shape[1])
        if config.contrastive:
            item.neutral_followup = config.neutral_followup
        items.append(item)
    return teacher_pb2.ScoreRequest(
        items=items,
        top_k=config.top_k,
        mode=_TEACHER_MODE_PROTOS[config.teacher_mode],
        adapter=adapter if config.teacher_mode != "base" else None,
        trust_region_mu=config.trust_region_mu,
        template=config.template,
    )


def targets(response: teacher_pb2.ScoreResponse, samples: tuple[Sample, ...], contrastive: bool) -> list[Targets]:
    """The teacher's answer as tensors, checked against the request (one result per sample, T * K values)."""
    if len(response.results) != len(samples):
        raise ClaasError(f"teacher returned {len(response.results)} results for {len(samples)} samples")
    out: list[Targets] = []
    k = None
    for i, (result, sample) in enumerate(zip(response.results, samples, strict=True)):
        teacher = _distributions(result.teacher, len(sample.response_ids), f"result {i}")
        k = k if k is not None else teacher.ids.shape[1]
        if teacher.ids.shape[1] != k:
            raise ClaasError(f"teacher returned K={teacher.ids.shape[1]} for result {i}, K={k} before")
        neutral = None
        if contrastive:
            if not result.HasField("neutral"):
                raise ClaasError(f"teacher returned no neutral distributions for result {i}")
            neutral = _distributions(result.neutral, len(sample.response_ids), f"neutral result {i}")
            if not torch.equal(neutral.ids, teacher.ids):
                raise ClaasError(f"teacher scored the neutral follow-up of result {i} on other ids than the feedback")
        out.append(Targets(teacher=teacher, neutral=neutral))
    return out


def _distributions(proto: teacher_pb2.TokenDistributions, length: int, where: str) -> Distributions:
    k = proto.k
    if k < 1 or len(proto.ids) != length * k or len(proto.logprobs) != length * k:
        raise ClaasError(f"teacher {where}: expected {length} x K ids and logprobs, got K={k}, {len(proto.ids)} ids")
    if len(proto.sampled_logprobs) != length or len(proto.tail_logprobs) != length:
        raise ClaasError(f"teacher {where}: expected {length} sampled and tail logprobs")
    return Distributions(
        ids=torch.tensor(list(proto.ids), dtype=torch.long).view(length, k),
        logprobs=torch.tensor(list(proto.logprobs), dtype=torch.float32).view(length, k),
        sampled=torch.tensor(list(proto.sampled_logprobs), dtype=torch.float32),
        tail=torch.tensor(list(proto.tail_logprobs), dtype=torch.float32),
    )


def init_response(adapter: storage_pb2.Adapter, version: storage_pb2.Version) -> trainer_pb2.InitAdapterResponse:
    return trainer_pb2.InitAdapterResponse(adapter=adapter, version=version)
