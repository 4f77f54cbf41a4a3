"""Plain types more than one service speaks of (the messages of ``common.proto``); no gRPC here.

Each service keeps its own types in its ``domain.py``; the ones below cross service boundaries unchanged, so
they are defined once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

#: The files of a version (PEFT's layout, what vLLM and ``PeftModel.from_pretrained`` read) ...
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
#: ... and the trainer's private optimizer state beside them: never exported, never served.
OPTIMIZER_FILE = "optimizer.safetensors"
#: What anyone may take away of a version.
EXPORTED_FILES = frozenset({ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE})


@dataclass(frozen=True)
class Message:
    """A chat message as the user and the model exchanged it."""

    role: str
    content: str


@dataclass(frozen=True)
class LoraSpec:
    """The shape of a LoRA adapter. ``rank`` 0 asks for the service's default; empty ``target_modules`` means
    every linear projection of the model."""

    rank: int = 0
    alpha: int = 0
    target_modules: tuple[str, ...] = ()
    dropout: float = 0.0


@dataclass(frozen=True)
class StepMetrics:
    """Metrics of one optimizer step."""

    step: int
    loss: float = 0.0
    distill_loss: float = 0.0
    kl: float = 0.0
    mean_is_ratio: float = 0.0
    clip_fraction: float = 0.0
    grad_norm: float = 0.0
    tokens: int = 0
    #: Mean teacher minus student log-probability of the sampled tokens.
    teacher_student_gap: float = 0.0


#: The lineage fact that lists, comma-separated, every job of a merged batch.
MERGED_JOB_IDS = "merged_job_ids"


@dataclass(frozen=True)
class Lineage:
    """What made a version: the job, its completions and feedback, the step metrics, free-form facts."""

    job_id: str = ""
    completion_ids: tuple[str, ...] = ()
    feedback: tuple[str, ...] = ()
    metrics: tuple[StepMetrics, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def job_ids(self) -> tuple[str, ...]:
        """Every job the version was made for: ``job_id`` and the jobs merged into its batch."""
        merged = self.extra.get(MERGED_JOB_IDS, "")
        return tuple(dict.fromkeys(j for j in (self.job_id, *merged.split(",")) if j))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Lineage:
        """Tolerant of missing keys (older manifests left empty fields out)."""
        names = {f.name for f in fields(StepMetrics)}
        metrics = tuple(
            StepMetrics(**{name: m.get(name, 0) for name in names} | {"tokens": int(m.get("tokens", 0))})
            for m in body.get("metrics", ())
        )
        return cls(
            job_id=body.get("job_id", ""),
            completion_ids=tuple(body.get("completion_ids", ())),
            feedback=tuple(body.get("feedback", ())),
            metrics=metrics,
            extra=dict(body.get("extra", {})),
        )
