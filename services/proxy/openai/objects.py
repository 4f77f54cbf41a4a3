"""The JSON objects of the proxy's own routes: adapters, versions with their lineage, training jobs.

Field names are those of the .proto messages, every field is present, 64-bit integers are numbers, enums
are spelled by name (``"JOB_STATE_SUCCEEDED"``) and timestamps are RFC 3339 (``null`` when unset) — the
JSON clients of the proxy have always received.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel

from services.common.domain import Lineage, LoraSpec, StepMetrics
from services.proxy.audit import FeedbackRecord
from services.storage.domain import Adapter, FileEntry, Version
from services.trainer.domain import JobState, JobView

JobStateName = Literal[
    "JOB_STATE_QUEUED",
    "JOB_STATE_SCORING",
    "JOB_STATE_TRAINING",
    "JOB_STATE_COMMITTING",
    "JOB_STATE_SUCCEEDED",
    "JOB_STATE_FAILED",
    "JOB_STATE_CANCELLED",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def rfc3339(moment: datetime) -> str | None:
    """``2026-03-10T12:00:00.250Z`` (0, 3 or 6 fractional digits, as protobuf writes a Timestamp)."""
    moment = moment.astimezone(UTC)
    if moment == _EPOCH:
        return None
    micros = moment.microsecond
    if micros == 0:
        fraction = ""
    elif micros % 1000 == 0:
        fraction = f".{micros // 1000:03d}"
    else:
        fraction = f".{micros:06d}"
    return f"{moment:%Y-%m-%dT%H:%M:%S}{fraction}Z"


def _float32(value: float) -> float:
    return float(f"{value:.7g}")  # a float32 field: no digits it does not hold


class LoraObject(BaseModel):
    """The shape of a LoRA adapter; rank 0 is the trainer's default, no target modules means all linear ones."""

    rank: int
    alpha: int
    target_modules: list[str]
    dropout: float

    @classmethod
    def of(cls, spec: LoraSpec) -> LoraObject:
        return cls(
            rank=spec.rank, alpha=spec.alpha, target_modules=list(spec.target_modules), dropout=_float32(spec.dropout)
        )


class AdapterObject(BaseModel):
    """An adapter: its name ``tenant/adapter``, what it was made for, its head version and tags."""

    name: str
    base_model: str
    lora: LoraObject
    head_version: int
    tags: dict[str, int]
    created_at: str | None

    @classmethod
    def of(cls, adapter: Adapter) -> AdapterObject:
        return cls(
            name=adapter.name,
            base_model=adapter.base_model,
            lora=LoraObject.of(adapter.lora),
            head_version=adapter.head_version,
            tags=dict(adapter.tags),
            created_at=rfc3339(adapter.created_at),
        )


class FileObject(BaseModel):
    """One file of a version, with its size and lower-case hex SHA-256."""

    path: str
    size: int
    sha256: str

    @classmethod
    def of(cls, entry: FileEntry) -> FileObject:
        return cls(path=entry.path, size=entry.size, sha256=entry.sha256)


class StepMetricsObject(BaseModel):
    """Metrics of one SDPO optimizer step."""

    step: int
    loss: float
    distill_loss: float
    kl: float
    mean_is_ratio: float
    clip_fraction: float
    grad_norm: float
    tokens: int
    teacher_student_gap: float

    @classmethod
    def of(cls, metrics: StepMetrics) -> StepMetricsObject:
        floats = ("loss", "distill_loss", "kl", "mean_is_ratio", "clip_fraction", "grad_norm", "teacher_student_gap")
        values = {name: _float32(getattr(metrics, name)) for name in floats}
        return cls(step=metrics.step, tokens=metrics.tokens, **values)


class LineageObject(BaseModel):
    """What made a version: its job, the completions and feedback it learned from, the step metrics."""

    job_id: str
    completion_ids: list[str]
    feedback: list[str]
    metrics: list[StepMetricsObject]
    extra: dict[str, str]

    @classmethod
    def of(cls, lineage: Lineage) -> LineageObject:
        return cls(
            job_id=lineage.job_id,
            completion_ids=list(lineage.completion_ids),
            feedback=list(lineage.feedback),
            metrics=[StepMetricsObject.of(m) for m in lineage.metrics],
            extra=dict(lineage.extra),
        )


class VersionObject(BaseModel):
    """One committed version of an adapter (``parent_version`` 0 for the first)."""

    name: str
    version: int
    parent_version: int
    files: list[FileObject]
    lineage: LineageObject
    created_at: str | None

    @classmethod
    def of(cls, version: Version) -> VersionObject:
        return cls(
            name=version.name,
            version=version.version,
            parent_version=version.parent_version,
            files=[FileObject.of(f) for f in version.files],
            lineage=LineageObject.of(version.lineage),
            created_at=rfc3339(version.created_at),
        )


class JobObject(BaseModel):
    """A training job at one moment; ``new_version`` is set once it SUCCEEDED, ``error`` once it failed."""

    job_id: str
    adapter: str
    state: JobStateName
    base_version: int
    new_version: int
    step: int
    total_steps: int
    metrics: list[StepMetricsObject]
    error: str
    merged_job_ids: list[str]

    @classmethod
    def of(cls, job: JobView) -> JobObject:
        return cls(
            job_id=job.job_id,
            adapter=job.adapter,
            state=state_name(job.state),  # type: ignore[arg-type]
            base_version=job.base_version,
            new_version=job.new_version,
            step=job.step,
            total_steps=job.total_steps,
            metrics=[StepMetricsObject.of(m) for m in job.metrics],
            error=job.error,
            merged_job_ids=list(job.merged_job_ids),
        )


class FeedbackSampleObject(BaseModel):
    """A completion the feedback was about: its conversation and the answer, as the rollout recorded them."""

    completion_id: str
    messages: list[dict[str, str]]
    response: str
    served_version: int
    #: What the teacher scored: the rendered hindsight prompt (the feedback in it), then the response.
    teacher_text: str


class FeedbackRecordObject(BaseModel):
    """What one feedback did (the audit log): the job, its versions, step metrics, seconds per phase the proxy
    saw, and the error of a job that failed or was refused (``job_id`` empty then)."""

    record_id: str
    adapter: str
    feedback: str
    samples: list[FeedbackSampleObject]
    submitted_at: int
    job_id: str
    state: JobStateName
    base_version: int
    new_version: int
    metrics: list[StepMetricsObject]
    error: str
    phase_seconds: dict[str, float]

    @classmethod
    def of(cls, record: FeedbackRecord) -> FeedbackRecordObject:
        return cls(
            record_id=record.record_id,
            adapter=record.adapter,
            feedback=record.feedback,
            samples=[
                FeedbackSampleObject(
                    completion_id=s.completion_id,
                    messages=[{"role": m.role, "content": m.content} for m in s.messages],
                    response=s.response,
                    served_version=s.served_version,
                    teacher_text=s.teacher_text,
                )
                for s in record.samples
            ],
            submitted_at=int(record.submitted_at.timestamp()),
            job_id=record.job_id,
            state=state_name(record.state),  # type: ignore[arg-type]
            base_version=record.base_version,
            new_version=record.new_version,
            metrics=[StepMetricsObject.of(m) for m in record.metrics],
            error=record.error,
            phase_seconds=dict(record.phases),
        )


def state_name(state: JobState) -> str:
    """A job state as the contract spells it."""
    return f"JOB_STATE_{state.name}"


def state_of(name: str) -> JobState:
    """The job state a contract name spells (``JOB_STATE_SUCCEEDED``); ``KeyError`` otherwise."""
    return JobState[name.removeprefix("JOB_STATE_")]
