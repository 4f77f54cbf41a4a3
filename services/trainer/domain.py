"""Plain data the trainer's parts pass to each other (no torch, no gRPC)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from services.trainer.config import SdpoConfig


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Sample:
    """One rollout with its feedback; ids are exactly what the serving model saw and sampled."""

    completion_id: str
    messages: tuple[Message, ...]
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    sampled_logprobs: tuple[float, ...]
    feedback: str
    served_version: int = 0


@dataclass(frozen=True)
class LoraShape:
    """What decides a LoRA slot: adapters of the same shape share one set of modules in the model."""

    rank: int
    alpha: int
    targets: tuple[str, ...]
    dropout: float = 0.0


@dataclass(frozen=True)
class StepResult:
    """Metrics of one optimizer step (the proto's StepMetrics)."""

    step: int
    loss: float
    distill_loss: float
    kl: float
    mean_is_ratio: float
    clip_fraction: float
    grad_norm: float
    tokens: int
    teacher_student_gap: float


class JobState(enum.Enum):
    QUEUED = "queued"
    SCORING = "scoring"
    TRAINING = "training"
    COMMITTING = "committing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class JobRequest:
    """A validated SubmitJob."""

    adapter: str
    samples: tuple[Sample, ...]
    config: SdpoConfig
    idempotency_key: str = ""


@dataclass(frozen=True)
class JobView:
    """A job's state at one moment: what GetJob returns and WatchJob streams."""

    job_id: str
    adapter: str
    state: JobState
    base_version: int = 0
    new_version: int = 0
    step: int = 0
    total_steps: int = 0
    metrics: tuple[StepResult, ...] = ()
    error: str = ""
    merged_job_ids: tuple[str, ...] = field(default=())
