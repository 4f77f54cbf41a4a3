"""Test doubles of the trainer's engine and teacher: the same protocols as the real ones, no model."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from claas.v1 import teacher_pb2

from services.common.errors import ClaasError, InvalidArgument
from services.trainer.config import SdpoConfig
from services.trainer.domain import LoraShape, Sample, StepResult

FINGERPRINT = "0123456789abcdef"
LINEAR = ("k_proj", "o_proj", "q_proj", "v_proj")


@dataclass
class FakeTeacher:
    """Records every Score request; answers uniform distributions over K ids plus the tail."""

    backend: str = "hf"
    fingerprint: str = FINGERPRINT
    fail_with: ClaasError | None = None
    requests: list[teacher_pb2.ScoreRequest] = field(default_factory=list)

    async def info(self) -> teacher_pb2.TeacherServiceInfoResponse:
        return teacher_pb2.TeacherServiceInfoResponse(
            model_id="fake-teacher", tokenizer_fingerprint=self.fingerprint, backend=self.backend, max_top_k=100
        )

    async def score(self, request: teacher_pb2.ScoreRequest) -> teacher_pb2.ScoreResponse:
        self.requests.append(request)
        if self.fail_with is not None:
            raise self.fail_with
        results = []
        for item in request.items:
            result = teacher_pb2.ScoreResult(teacher=_uniform(item, request.top_k, 0), teacher_prompt="prompt")
            if item.neutral_followup:  # scored on the feedback's ids, like the real teacher
                result.neutral.CopyFrom(_uniform(item, request.top_k, 0))
            results.append(result)
        return teacher_pb2.ScoreResponse(results=results)


def _uniform(item: teacher_pb2.ScoreItem, top_k: int, offset: int) -> teacher_pb2.TokenDistributions:
    length = len(item.response_ids)
    k = item.support_k or top_k
    ids = list(item.support_ids) or [(j + offset) % 1000 for _ in range(length) for j in range(k)]
    logprob = -math.log(k + 1)
    return teacher_pb2.TokenDistributions(
        k=k,
        ids=ids,
        logprobs=[logprob] * (length * k),
        sampled_logprobs=[logprob] * length,
        tail_logprobs=[logprob] * length,
    )


@dataclass
class FakeEngine:
    """Steps return fixed metrics; ``hold`` (when set up) blocks every step until the test releases it."""

    model_id: str = "fake-model"
    fingerprint: str = FINGERPRINT
    device: str = "cpu"
    vocab_size: int = 1000
    max_context: int = 512
    max_lora_rank: int = 16
    hold: threading.Event | None = None
    opened: list[tuple[str, bool]] = field(default_factory=list)
    targets: list[list] = field(default_factory=list)
    steps: int = 0

    def resolve_lora(self, shape: LoraShape) -> LoraShape:
        if not 1 <= shape.rank <= self.max_lora_rank:
            raise InvalidArgument(f"LoRA rank must be in [1, {self.max_lora_rank}], got {shape.rank}")
        unknown = sorted(set(shape.targets) - set(LINEAR))
        if unknown:
            raise InvalidArgument(f"unknown LoRA target modules {unknown}")
        return LoraShape(shape.rank, shape.alpha, tuple(sorted(set(shape.targets))) or LINEAR, shape.dropout)

    def init_files(self, shape: LoraShape) -> dict[str, bytes]:
        config = {"r": shape.rank, "lora_alpha": shape.alpha, "target_modules": list(shape.targets)}
        return {"adapter_config.json": json.dumps(config).encode(), "adapter_model.safetensors": b"init"}

    def cached(self, key: str) -> bool:
        return False

    def open(self, key: str, shape: LoraShape, files: dict[str, bytes] | None, config: SdpoConfig) -> FakeSession:
        self.opened.append((key, files is not None and "adapter_model.safetensors" in files))
        return FakeSession(self, files or {})


@dataclass
class FakeSession:
    engine: FakeEngine
    files: dict[str, bytes]
    samples: Sequence[Sample] = ()

    def student_support(self, samples: Sequence[Sample], k: int) -> list[torch.Tensor]:
        return [torch.arange(k).repeat(len(s.response_ids), 1) + 500 for s in samples]

    def set_targets(self, samples: Sequence[Sample], targets: Sequence) -> None:
        self.samples = samples
        self.engine.targets.append(list(targets))

    def step(self, number: int) -> StepResult:
        if self.engine.hold is not None and not self.engine.hold.wait(timeout=30):
            raise TimeoutError("the test never released the step")
        self.engine.steps += 1
        tokens = sum(len(s.response_ids) for s in self.samples)
        return StepResult(number, 1.0 / number, 1.0 / number, 0.0, 1.0, 0.0, 0.5, tokens, -0.1)

    def export(self) -> dict[str, bytes]:
        weights = self.files.get("adapter_model.safetensors", b"") + b"+step"
        return {"adapter_config.json": b"{}", "adapter_model.safetensors": weights, "optimizer.safetensors": b"adam"}

    def keep(self, key: str) -> None:
        pass
