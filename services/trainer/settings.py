"""Settings of the trainer (``CLAAS_*`` environment variables)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.common.heartbeat import default_member
from services.common.model import PACKAGED_MODEL
from services.common.objectstore import ObjectStoreSettings, store_secrets
from services.common.settings import CommonSettings, FeedbackLimits, ServiceAddress, StorageCaller


class TrainerSettings(CommonSettings, ObjectStoreSettings, FeedbackLimits, StorageCaller):
    """The trainer: one warm base model per device, a bounded job queue, commits through storage, and job
    records in the object store (``CLAAS_STORE_URL``, the one storage uses) that outlive the process."""

    port: int = Field(50053, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    base_model: str = Field(
        PACKAGED_MODEL, description="Model id or folder of the base model (the built-in name is prepared on demand)."
    )
    device: str = Field("cpu", description='Torch device of the model, e.g. "cpu" or "cuda:0".')
    teacher_addr: ServiceAddress = Field(
        "127.0.0.1:50052",
        description="The teacher: host:port, its replicas as ip:port,ip:port, or dns:///name:port (round robin).",
    )
    default_contrastive: bool = Field(
        True,
        description="Jobs that do not say use the contrastive baseline (with an hf teacher): an unrelated "
        "follow-up then leaves the adapter near the base model instead of degenerating it.",
    )
    max_lora_rank: int = Field(
        16, ge=1, le=256, description="Largest LoRA rank accepted; must not exceed vLLM's --max-lora-rank."
    )
    default_lora_rank: int = Field(16, ge=1, le=256, description="Rank of InitAdapter when the request gives none.")
    default_lora_alpha: int = Field(32, ge=1, description="LoRA alpha of InitAdapter when the request gives none.")
    max_queue: int = Field(64, ge=1, le=100_000, description="Jobs that may wait; more is RESOURCE_EXHAUSTED.")
    max_queue_per_tenant: int = Field(
        16,
        ge=1,
        le=100_000,
        description="Jobs one tenant may have waiting (a quota: more is RESOURCE_EXHAUSTED naming it), so that "
        "one tenant cannot fill the queue for all.",
    )
    trainer_id: str = Field(
        "",
        description="This trainer's name in the job records: after a restart it resumes the unfinished jobs "
        "recorded under this name. Empty: host name and port (random when the port is; a StatefulSet pod's "
        "name survives its restarts).",
    )
    job_lease_s: float = Field(
        30.0,
        ge=1.0,
        le=3600.0,
        description="A trainer whose heartbeat (written every third of this) is older is gone: another trainer "
        "takes over its unfinished jobs.",
    )
    job_retention_days: int = Field(
        30, ge=1, description="Records of finished jobs older than this are deleted (like the proxy's rollouts)."
    )
    max_job_records: int = Field(
        10_000, ge=10, description="Finished job records kept in memory (oldest dropped first) in front of the store."
    )
    max_batch_samples: int = Field(
        32, ge=1, description="Largest batch that merging queued jobs of one adapter may build."
    )
    micro_batch_size: int = Field(
        4, ge=1, description="Sequences per forward/backward pass; gradients accumulate over a batch."
    )
    max_response_tokens: int = Field(2048, ge=1, description="Longest response (tokens) a sample may carry.")
    max_sequence_tokens: int = Field(8192, ge=2, description="Longest prompt + response (tokens) a sample may carry.")
    commit_retries: int = Field(
        3, ge=0, le=20, description="Re-runs of a job on the new head when another writer moved it (ABORTED)."
    )
    upload_retries: int = Field(
        3,
        ge=0,
        le=20,
        description="Retries of a version upload that failed without an answer (storage restarting, a lost reply); "
        "storage commits a job once, so a retry never makes a second version.",
    )
    adapter_cache_size: int = Field(
        4, ge=0, description="Adapter versions (weights + optimizer state) kept in memory, least recently used out."
    )
    adam_epsilon: float = Field(
        1e-6,
        gt=0,
        le=1e-2,
        description="AdamW epsilon, a noise floor for updates. Adam scales any gradient to a learning-rate-sized "
        "step, even rounding noise (measured: the contrastive control's gradient norm ~1e-5 against ~0.4 for real "
        "feedback still moved the adapter with torch's default 1e-8); per-element gradients well below this barely "
        "move it.",
    )
    commit_guard: bool = Field(
        True,
        description="Check every trained version before it becomes the head: drift to the base model and "
        "degenerate answers on a fixed set of neutral prompts. A version over the limits is kept as a non-head "
        "version with the reason in its lineage, and its job fails.",
    )
    guard_max_drift: float = Field(
        0.2,
        gt=0,
        description="Largest mean per-token KL(base || new version), in nats, on the base model's greedy answers "
        "to the guard's neutral prompts (at 135M: learned names 0.01-0.05, a broken adapter several nats).",
    )
    guard_conversations: int = Field(
        4,
        ge=0,
        le=16,
        description="How many of the job's own conversations (distinct prompts) the guard also reads for "
        "degeneration, beside its four neutral questions; one degenerate answer there rejects the version.",
    )
    guard_max_degenerate: int = Field(
        1,
        ge=0,
        le=4,
        description="Degenerate answers (beyond the base model's own) the guard lets a version give to its four "
        "neutral questions. One greedy loop there happened to a sound update (measured in a Kuro run whose "
        "final answers were all clean); a broken adapter loops on most of them.",
    )
    guard_fallback: bool = Field(
        True,
        description="When the guard rejects a job's trained version, read the version of the job's halfway step "
        "(steps // 2) too and commit that one if it passes: an update that went too far still teaches (measured: "
        "a Zara job rejected for a loop at its last step passed at its halfway step, and the name went on to p 0.70).",
    )
    guard_max_new_tokens: int = Field(
        40,
        ge=8,
        le=256,
        description="Length of the greedy answers the guard reads for degeneration. 60 (what `claas demo` reads) "
        "caught loops that start late, but also stalled learning: at 135M it rejected most identity jobs.",
    )
    seed: int = Field(0, description="Seed of LoRA initialisation and dropout: same inputs, same adapter.")
    reload_model_per_job: bool = Field(
        False,
        description="Load the base model from disk for every job (the anchor system's way). For benchmarks "
        "only: it makes every job slower by the load time.",
    )
    teacher_timeout_s: float = Field(300.0, gt=0, description="Deadline of one teacher Score call.")
    storage_timeout_s: float = Field(120.0, gt=0, description="Deadline of one storage call.")
    dependency_wait_s: float = Field(
        300.0, ge=0, description="At start, how long to wait for the teacher to answer Info before giving up."
    )
    torch_threads: int = Field(0, ge=0, description="Torch CPU threads; 0 keeps torch's default.")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Weights dtype of the base model (float32 on CPU; bfloat16 on GPUs that have it)."
    )

    def secrets(self) -> dict[str, str]:
        return super().secrets() | store_secrets(self)

    def owner(self) -> str:
        """The name the job records know this trainer by."""
        return self.trainer_id or default_member(self.port)
