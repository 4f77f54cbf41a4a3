"""``common.proto`` messages <-> the shared types of ``services.common.domain``.

float32 fields are rounded to 7 significant digits on the way in, so 2e-4 stays 2e-4 rather than
0.000199999995.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from claas.v1 import common_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.domain import Lineage, LoraSpec, Message, StepMetrics


def float32(value: float | str) -> float:
    """A float32 field's value with no digits it does not hold. Proto JSON spells the non-finite values as
    strings ("NaN", "Infinity", "-Infinity"); they are read as the floats they name."""
    return float(value) if isinstance(value, str) else float(f"{value:.7g}")


def timestamp_to_proto(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def timestamp_from_proto(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def messages_to_proto(messages: Iterable[Message]) -> list[common_pb2.ChatMessage]:
    return [common_pb2.ChatMessage(role=m.role, content=m.content) for m in messages]


def messages_from_proto(messages: Iterable[common_pb2.ChatMessage]) -> tuple[Message, ...]:
    return tuple(Message(role=m.role, content=m.content) for m in messages)


def lora_to_proto(spec: LoraSpec) -> common_pb2.LoraSpec:
    return common_pb2.LoraSpec(
        rank=spec.rank, alpha=spec.alpha, target_modules=list(spec.target_modules), dropout=spec.dropout
    )


def lora_from_proto(spec: common_pb2.LoraSpec) -> LoraSpec:
    return LoraSpec(
        rank=spec.rank, alpha=spec.alpha, target_modules=tuple(spec.target_modules), dropout=float32(spec.dropout)
    )


def step_metrics_to_proto(metrics: StepMetrics) -> common_pb2.StepMetrics:
    return common_pb2.StepMetrics(
        step=metrics.step,
        loss=metrics.loss,
        distill_loss=metrics.distill_loss,
        kl=metrics.kl,
        mean_is_ratio=metrics.mean_is_ratio,
        clip_fraction=metrics.clip_fraction,
        grad_norm=metrics.grad_norm,
        tokens=metrics.tokens,
        teacher_student_gap=metrics.teacher_student_gap,
    )


def step_metrics_from_proto(metrics: common_pb2.StepMetrics) -> StepMetrics:
    return StepMetrics(
        step=metrics.step,
        loss=float32(metrics.loss),
        distill_loss=float32(metrics.distill_loss),
        kl=float32(metrics.kl),
        mean_is_ratio=float32(metrics.mean_is_ratio),
        clip_fraction=float32(metrics.clip_fraction),
        grad_norm=float32(metrics.grad_norm),
        tokens=metrics.tokens,
        teacher_student_gap=float32(metrics.teacher_student_gap),
    )


def lineage_to_proto(lineage: Lineage) -> common_pb2.Lineage:
    return common_pb2.Lineage(
        job_id=lineage.job_id,
        completion_ids=list(lineage.completion_ids),
        feedback=list(lineage.feedback),
        metrics=[step_metrics_to_proto(m) for m in lineage.metrics],
        extra=lineage.extra,
    )


def lineage_from_proto(lineage: common_pb2.Lineage) -> Lineage:
    return Lineage(
        job_id=lineage.job_id,
        completion_ids=tuple(lineage.completion_ids),
        feedback=tuple(lineage.feedback),
        metrics=tuple(step_metrics_from_proto(m) for m in lineage.metrics),
        extra=dict(lineage.extra),
    )
