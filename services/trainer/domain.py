"""Plain data the trainer's parts pass to each other, and what its callers send and get back.

No torch and no gRPC at import time: the proxy imports this module. The teacher's answer stays in the
teacher's own numpy type (``TokenDistributions``); ``batching`` turns it into tensors.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from services.common.domain import Message, StepMetrics
from services.teacher.domain import TokenDistributions
from services.trainer.config import SdpoConfig


@dataclass(frozen=True)
class Sample:
    """One rollout with its feedback; ids are exactly what the serving model saw and sampled."""

    completion_id: str
    messages: tuple[Message, ...]
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    #: The serving model's log-probability of each response token (the behaviour policy).
    sampled_logprobs: tuple[float, ...]
    feedback: str
    served_version: int = 0


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
    metrics: tuple[StepMetrics, ...] = ()
    error: str = ""
    merged_job_ids: tuple[str, ...] = field(default=())
    #: What the teacher scored, by completion id (rendered hindsight prompt + response); while running only.
    teacher_texts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Targets:
    """What the teacher said about one sample: its distributions after the feedback and, for the
    contrastive baseline, after the neutral follow-up (scored on the same ids)."""

    teacher: TokenDistributions
    neutral: TokenDistributions | None = None


@dataclass(frozen=True)
class TrainerInfo:
    """What the Info RPC reports."""

    model_id: str
    tokenizer_fingerprint: str
    device: str
    queue_depth: int
    max_queue: int
    max_lora_rank: int
