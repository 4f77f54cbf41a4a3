"""Test doubles of the trainer's model and teacher: the same roles as the real ones, no model.

The fake model checks LoRA shapes with the very function the real engine calls (``lora.resolve_lora``);
only the model's facts (its linear modules, the rank limit) are the fake's own.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from services.common.domain import LoraSpec, StepMetrics
from services.common.errors import ClaasError
from services.teacher.domain import ScoreItem, ScoreRequest, ScoreResult, TeacherInfo, TokenDistributions
from services.trainer.config import SdpoConfig
from services.trainer.domain import Sample, Targets
from services.trainer.guard import GuardProbe
from services.trainer.lora import resolve_lora

FINGERPRINT = "0123456789abcdef"
LINEAR = ("k_proj", "o_proj", "q_proj", "v_proj")


@dataclass
class FakeTeacher:
    """Records every Score request; answers uniform distributions over K ids plus the tail."""

    backend: str = "hf"
    fingerprint: str = FINGERPRINT
    fail_with: ClaasError | None = None
    requests: list[ScoreRequest] = field(default_factory=list)

    async def info(self) -> TeacherInfo:
        return TeacherInfo(
            model_id="fake-teacher",
            tokenizer_fingerprint=self.fingerprint,
            backend=self.backend,
            max_top_k=100,
            vocab_size=0,
            max_context=0,
        )

    async def score(self, request: ScoreRequest) -> list[ScoreResult]:
        self.requests.append(request)
        if self.fail_with is not None:
            raise self.fail_with
        results = []
        for item in request.items:
            # The neutral is scored on the feedback's ids, like the real teacher.
            neutral = _uniform(item, request.top_k, 0) if item.neutral_followup else None
            results.append(ScoreResult(_uniform(item, request.top_k, 0), neutral, "prompt", 0))
        return results


def _uniform(item: ScoreItem, top_k: int, offset: int) -> TokenDistributions:
    length = len(item.response_ids)
    k = item.support_k or top_k
    ids = list(item.support_ids) or [(j + offset) % 1000 for _ in range(length) for j in range(k)]
    logprob = -math.log(k + 1)
    return TokenDistributions(
        ids=np.asarray(ids, dtype=np.int32).reshape(length, k),
        logprobs=np.full((length, k), logprob, dtype=np.float32),
        sampled_logprobs=np.full(length, logprob, dtype=np.float32),
        tail_logprobs=np.full(length, logprob, dtype=np.float32),
    )


#: A version the commit guard lets through: little drift, the base model's own answer.
CLEAN_PROBE = GuardProbe(drift=0.001, answers=("Paris.",), base_answers=("Paris.",))


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
    targets: list[list[Targets]] = field(default_factory=list)
    remembered: list[str] = field(default_factory=list)
    steps: int = 0
    #: What the commit guard measures of every trained version (a clean one unless a test says otherwise).
    probe: GuardProbe = CLEAN_PROBE
    #: What the guard measures instead once a session has taken this many steps (an update that went too far).
    probe_after: dict[int, GuardProbe] = field(default_factory=dict)
    #: The conversations the guard read, per job.
    guarded: list[list[list[int]]] = field(default_factory=list)

    def resolve_lora(self, spec: LoraSpec, defaults: LoraSpec | None = None) -> LoraSpec:
        return resolve_lora(spec, LINEAR, max_rank=self.max_lora_rank, defaults=defaults)

    def teacher_text(self, sample: Sample, template: str) -> str:
        # No tokenizer here: the ids stand for the text (the real rendering has its own model test).
        return f"[{template}] {sample.messages[-1].content} | {sample.feedback} -> {list(sample.response_ids)}"

    def init_files(self, spec: LoraSpec) -> dict[str, bytes]:
        config = {"r": spec.rank, "lora_alpha": spec.alpha, "target_modules": list(spec.target_modules)}
        return {"adapter_config.json": json.dumps(config).encode(), "adapter_model.safetensors": b"init"}

    def cached(self, key: str) -> bool:
        return False

    def open(self, key: str, spec: LoraSpec, files: dict[str, bytes] | None, config: SdpoConfig) -> FakeSession:
        self.opened.append((key, files is not None and "adapter_model.safetensors" in files))
        return FakeSession(self, files or {}, config)

    def export(self, session: FakeSession) -> tuple[object, dict[str, bytes]]:
        weights = session.files.get("adapter_model.safetensors", b"") + b"+step" * session.taken
        files = {"adapter_config.json": b"{}", "adapter_model.safetensors": weights, "optimizer.safetensors": b"adam"}
        return weights, files

    def remember(self, key: str, entry: object) -> None:
        self.remembered.append(key)

    def guard_probe(
        self,
        session: FakeSession,
        drift_prompts: Sequence[str],
        conversations: Sequence[Sequence[int]],
        max_new_tokens: int,
    ) -> GuardProbe:
        self.guarded.append([list(c) for c in conversations])
        return self.probe_after.get(session.taken, self.probe)


@dataclass
class FakeSession:
    engine: FakeEngine
    files: dict[str, bytes]
    config: SdpoConfig
    samples: Sequence[Sample] = ()
    #: Steps the session's state has seen (``restore`` puts an earlier count back).
    taken: int = 0

    def student_support(self, samples: Sequence[Sample], k: int) -> list[np.ndarray]:
        return [np.tile(np.arange(k) + 500, (len(s.response_ids), 1)) for s in samples]

    def guided_samples(self, samples: Sequence[Sample], seed: int) -> list[Sample]:
        """One short made-up response per sample and guided rollout, in the sample's own context."""
        copies = self.config.guided_rollouts
        return [
            dataclasses.replace(s, completion_id=f"{s.completion_id}#guided{c + 1}", response_ids=(7, 8),
                                sampled_logprobs=(-1.0, -1.0))
            for s in samples
            for c in range(copies)
        ]  # fmt: skip

    def greedy_samples(self, samples: Sequence[Sample]) -> list[Sample]:
        """One short made-up response per distinct prompt, in that prompt's context."""
        distinct = [s for i, s in enumerate(samples) if s.prompt_ids not in {t.prompt_ids for t in samples[:i]}]
        return [dataclasses.replace(s, completion_id=f"{s.completion_id}#greedy", response_ids=(9,),
                                    sampled_logprobs=(-0.5,)) for s in distinct]  # fmt: skip

    def set_targets(self, samples: Sequence[Sample], targets: Sequence[Targets]) -> None:
        self.samples = samples
        self.engine.targets.append(list(targets))

    def step(self, number: int) -> StepMetrics:
        if self.engine.hold is not None and not self.engine.hold.wait(timeout=30):
            raise TimeoutError("the test never released the step")
        self.engine.steps += 1
        self.taken += 1
        tokens = sum(len(s.response_ids) for s in self.samples)
        return StepMetrics(number, 1.0 / number, 1.0 / number, 0.0, 1.0, 0.0, 0.5, tokens, -0.1)

    def snapshot(self) -> int:
        return self.taken

    def restore(self, snapshot: int) -> None:
        self.taken = snapshot
