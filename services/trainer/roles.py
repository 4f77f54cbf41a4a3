"""The trainer's dependencies, each described by the role it plays; the real classes and the tests'
doubles both fit. Every method of ``TrainingModel`` and ``TrainingSession`` blocks (run them in a thread)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from services.common.domain import Lineage, LoraSpec, StepMetrics
from services.storage.domain import Adapter, Version
from services.teacher.domain import ScoreRequest, ScoreResult, TeacherInfo
from services.trainer.config import SdpoConfig
from services.trainer.domain import Sample, Targets
from services.trainer.guard import GuardProbe


class Scorer(Protocol):
    """Scores responses under the hindsight prompt (``services.teacher.client.TeacherClient``)."""

    async def score(self, request: ScoreRequest) -> list[ScoreResult]: ...

    async def info(self) -> TeacherInfo: ...


class VersionStore(Protocol):
    """What the trainer uses of ``services.storage.client.StorageClient``."""

    async def create_adapter(self, name: str, base_model: str, lora: LoraSpec) -> Adapter: ...

    async def get_adapter(self, name: str) -> Adapter: ...

    async def get_version(self, name: str, version: int = 0) -> Version: ...

    async def read_version(
        self, name: str, version: int = 0, *, include_optimizer: bool = False
    ) -> tuple[Version, dict[str, bytes]]: ...

    async def upload_version(
        self,
        name: str,
        parent_version: int,
        files: dict[str, bytes],
        lineage: Lineage,
        *,
        set_head: bool = True,
        incarnation: str = "",
    ) -> Version: ...


class TrainingSession(Protocol):
    """One job's training on the model (``services.trainer.batching.Session``)."""

    def student_support(self, samples: Sequence[Sample], k: int) -> list[np.ndarray]: ...

    def guided_samples(self, samples: Sequence[Sample], seed: int) -> list[Sample]: ...

    def greedy_samples(self, samples: Sequence[Sample]) -> list[Sample]: ...

    def set_targets(self, samples: Sequence[Sample], targets: Sequence[Targets]) -> None: ...

    def step(self, number: int) -> StepMetrics: ...

    def snapshot(self) -> object: ...

    def restore(self, snapshot: object) -> None: ...


class TrainingModel(Protocol):
    """The warm model with its LoRA slots (``services.trainer.engine.Engine``)."""

    model_id: str
    fingerprint: str
    device: str
    vocab_size: int
    max_context: int

    def resolve_lora(self, spec: LoraSpec, defaults: LoraSpec | None = None) -> LoraSpec: ...

    def init_files(self, spec: LoraSpec) -> dict[str, bytes]: ...

    def cached(self, key: str) -> bool: ...

    def open(self, key: str, spec: LoraSpec, files: dict[str, bytes] | None, config: SdpoConfig) -> TrainingSession: ...

    def export(self, session: TrainingSession) -> tuple[object, dict[str, bytes]]:
        """The session's state as a cache entry (for ``remember``) and as the new version's files."""
        ...

    def remember(self, key: str, entry: object) -> None: ...

    def guard_probe(
        self,
        session: TrainingSession,
        drift_prompts: Sequence[str],
        conversations: Sequence[Sequence[int]],
        max_new_tokens: int,
    ) -> GuardProbe: ...
