"""The commit guard: a trained version is read before it may become the head.

The new version answers greedily and is compared with the base model: the drift (mean per-token
KL(base || new) on the base model's own greedy answers to a fixed set of neutral questions, teacher-forced)
and degenerate answers (``services.common.degeneration``), to those questions and to the job's own
conversations, beyond those the base model itself gives. Over a limit, the version is kept off the head with
the reason in its lineage and the job fails; the head stays where it was. No torch here: the engine
measures (``Engine.guard_probe``), this module judges.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from services.common.degeneration import degeneration

#: Neutral questions with short factual answers, none about identity, style or emoji: the drift is measured
#: on the base model's answers to these. The packaged model answers each cleanly.
DRIFT_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Give me one tip for staying focused.",
    "What colour is the sky on a clear day?",
)
# The job's own conversations (the prompts its rollouts answered, in the user's context with its system
# message) are read for degeneration too, up to ``CLAAS_GUARD_CONVERSATIONS`` of them, with no degenerate
# answer allowed: a broken adapter shows there first. Measured: unrelated feedback asking for a cat joke gave
# "I'm a cat-loving cat-lover." four times over to "Who are you?" under the user's system message, while the
# same question without it, and every neutral question, still read cleanly.

#: How a job's error starts (after its status code) when the guard kept its version off the head.
REJECTION = "the commit guard kept version"


def rejected_by_guard(error: str) -> bool:
    """Did a job end FAILED because the guard rejected its version (rather than a fault)?"""
    return REJECTION in error


@dataclass(frozen=True)
class GuardProbe:
    """What the engine measured: drift from the base model, and both models' greedy answers per prompt."""

    drift: float
    answers: tuple[str, ...]
    base_answers: tuple[str, ...]


@dataclass(frozen=True)
class GuardVerdict:
    """The guard's decision on one version; ``reason`` is empty when it may become the head."""

    drift: float
    degenerate: tuple[str, ...]
    seconds: float
    reason: str
    #: Set when this is the verdict on a job's halfway step, read because its last step was rejected: why.
    fallback: str = ""

    @property
    def passed(self) -> bool:
        return not self.reason

    def after_fallback(self, step: int, steps: int, rejected: GuardVerdict) -> GuardVerdict:
        """This verdict (on the state after ``step``) as the one that decides a job whose ``steps`` steps the
        ``rejected`` verdict refused: it tells both, and the guard's time is both reads'."""
        why = f"step {steps} of {steps} was rejected ({rejected.reason}); step {step} was read instead"
        reason = f"{self.reason}; {why}" if self.reason else ""
        return dataclasses.replace(self, seconds=self.seconds + rejected.seconds, reason=reason, fallback=why)

    def lineage_extra(self) -> dict[str, str]:
        """The verdict as lineage facts (``guard`` is "passed" or "rejected")."""
        extra = {
            "guard": "passed" if self.passed else "rejected",
            "guard_drift": f"{self.drift:.4g}",
            "guard_seconds": f"{self.seconds:.3f}",
        }
        if self.reason:
            extra["guard_reason"] = self.reason
        if self.fallback:
            extra["guard_fallback"] = self.fallback
        return extra


def judge(probe: GuardProbe, *, questions: int, max_drift: float, max_degenerate: int, seconds: float) -> GuardVerdict:
    """Reject a version that drifted more than ``max_drift``, or answers degenerately where the base model did
    not: more than ``max_degenerate`` times on the first ``questions`` answers (the fixed neutral questions),
    or at all on the rest (the job's own conversations, which the user reads next)."""
    broken = [
        (index, f"{answer[:80]!r} ({why})")
        for index, (answer, base) in enumerate(zip(probe.answers, probe.base_answers, strict=True))
        if (why := degeneration(answer)) and not degeneration(base)
    ]
    on_questions = [text for index, text in broken if index < questions]
    on_conversations = [text for index, text in broken if index >= questions]
    reasons = []
    if not probe.drift <= max_drift:  # NaN drift is a broken model too
        reasons.append(f"drift {probe.drift:.3g} nats/token from the base model exceeds the limit {max_drift:g}")
    if len(on_questions) > max_degenerate:
        reasons.append(f"{len(on_questions)} of {questions} neutral answers degenerate: {on_questions[0]}")
    if on_conversations:
        total = len(probe.answers) - questions
        reasons.append(f"{len(on_conversations)} of {total} answers to the job's conversations degenerate: "
                       f"{on_conversations[0]}")  # fmt: skip
    return GuardVerdict(probe.drift, tuple(text for _, text in broken), seconds, "; ".join(reasons))
