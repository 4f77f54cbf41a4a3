"""One measurement of one adapter version, every metric through the public API (chat and score)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from services.cli.eval import capability, collapse
from services.cli.eval.api import Api, Messages
from services.cli.eval.config import RunConfig
from services.cli.eval.preferences import END_OF_TURN, DecisionPoint, Preference
from services.common.degeneration import degenerate


@dataclass(frozen=True)
class Measurer:
    """Measures adapters of one preference under one run configuration."""

    api: Api
    config: RunConfig
    preference: Preference
    #: Tokens the chat template ends an assistant turn with (end of turn first), found once per run.
    _turn_end: list[int] = field(default_factory=list)

    def _messages(self, prompt: str) -> Messages:
        return [{"role": "system", "content": self.config.system_prompt}, {"role": "user", "content": prompt}]

    def _answer(self, model: str, prompt: str, max_tokens: int) -> str:
        return self.api.chat(model, self._messages(prompt), temperature=0.0, max_tokens=max_tokens, seed=0).text

    def margin(self, model: str) -> dict[str, float]:
        """Mean log p(preferred) - log p(dispreferred) over the pairs, in total and per token."""
        totals, per_token = [], []
        for pair in self.preference.logprob_pairs:
            good = self.api.score(model, self._messages(pair.prompt), pair.preferred)
            bad = self.api.score(model, self._messages(pair.prompt), pair.dispreferred)
            totals.append(good.logprob_sum - bad.logprob_sum)
            per_token.append(good.logprob_sum / len(good.logprobs) - bad.logprob_sum / len(bad.logprobs))
        return {"margin": _mean(totals), "margin_per_token": _mean(per_token)}

    def turn_end_length(self, model: str) -> int:
        """How many tokens close a scored completion (the end of turn and what the template puts after it):
        the common tail of two completions that differ only in their text."""
        if not self._turn_end:
            a = self.api.score(model, self._messages("Hi"), "Yes").token_ids
            b = self.api.score(model, self._messages("Hi"), "No").token_ids
            tail = 0
            while tail < min(len(a), len(b)) - 1 and a[-1 - tail] == b[-1 - tail]:
                tail += 1
            self._turn_end.append(max(tail, 1))
        return self._turn_end[0]

    def decision_point(self, model: str, point: DecisionPoint) -> tuple[float, float]:
        """(p of the whole target, p of its first token) right after the prefix.

        The prefix alone is scored too: its tokens before the end of turn are where the target's start, so
        no tokenizer is needed here and a name of several tokens is read whole."""
        messages = self._messages(point.prompt)
        closing = self.turn_end_length(model)
        alone = self.api.score(model, messages, point.prefix)
        end = len(alone.logprobs) - closing
        if point.target == END_OF_TURN:
            p = math.exp(alone.logprobs[end])
            return p, p
        full = self.api.score(model, messages, point.prefix + point.target)
        target = full.logprobs[end : len(full.logprobs) - closing]
        if not target:
            return 1.0, 1.0
        return math.exp(sum(target)), math.exp(target[0])

    def decision(self, model: str) -> dict[str, float]:
        if not self.preference.decision_points:
            return {}
        read = [self.decision_point(model, point) for point in self.preference.decision_points]
        return {"decision_p": _mean([whole for whole, _ in read]), "decision_p_first": _mean([f for _, f in read])}

    def compliance(self, model: str) -> tuple[dict[str, float], list[str]]:
        limit = self.preference.eval_max_tokens or self.config.eval_max_tokens
        answers = [self._answer(model, p, limit) for p in self.preference.held_out]
        verdicts = [self.preference.verify(a) for a in answers]
        metrics = {
            "compliance": _mean([v.score for v in verdicts]),
            "pass_rate": _mean([float(v.passed) for v in verdicts]),
            "degenerate_rate": _mean([float(degenerate(a)) for a in answers]),
        }
        return metrics, answers

    def general(self, model: str) -> tuple[dict[str, float], dict[str, str]]:
        settings = self.config.general
        coding_answer = self._answer(model, capability.CODING_PROMPT, settings.max_tokens)
        coding = capability.check_coding(coding_answer, timeout_s=settings.timeout_s, memory_mb=settings.memory_mb)
        answers = {"coding": coding_answer}
        passed = 0
        for probe in capability.INSTRUCTION_PROBES:
            answers[probe.name] = self._answer(model, probe.prompt, settings.max_tokens)
            passed += probe.check(answers[probe.name])
        rate = passed / len(capability.INSTRUCTION_PROBES)
        metrics = {
            "coding_ok": float(coding.ok),
            "instruction_pass_rate": rate,
            "general_score": capability.general_score(coding.ok, rate),
        }
        return metrics, answers | {"coding_failure": coding.failure}

    def collapse(self, model: str) -> tuple[dict[str, float], list[str]]:
        settings = self.config.collapse
        messages = self._messages(collapse.COLLAPSE_PROMPT)
        greedy = self.api.chat(
            model, messages, temperature=0.0, max_tokens=settings.max_tokens, top_logprobs=settings.top_logprobs
        )
        samples = [
            self.api.chat(
                model, messages, temperature=settings.temperature, max_tokens=settings.max_tokens, seed=1000 + i
            ).text
            for i in range(settings.samples)
        ]
        metrics = {
            "entropy": collapse.mean_entropy(greedy.logprobs),
            "mean_logprob": collapse.mean_logprob(greedy.logprobs),
            "self_rouge_l": collapse.self_rouge_l(samples),
        }
        return metrics, [greedy.text, *samples]

    def measure(self, model: str) -> dict[str, Any]:
        """Every metric of the adapter's served version; ``answers`` holds the texts they were read from."""
        metrics: dict[str, Any] = {**self.margin(model), **self.decision(model)}
        held_out, held_answers = self.compliance(model)
        metrics |= held_out
        answers: dict[str, Any] = {"held_out": held_answers}
        if self.config.general.enabled:
            general, general_answers = self.general(model)
            metrics |= general
            answers["general"] = general_answers
        collapsed, collapse_answers = self.collapse(model)
        metrics |= collapsed
        answers["collapse"] = collapse_answers
        return {"metrics": metrics, "answers": answers}


def against_baseline(
    metrics: dict[str, Any], baseline: dict[str, Any], config: RunConfig
) -> tuple[dict[str, Any], list[str]]:
    """Add what needs the baseline: entropy ratio, log-prob drift and the collapse alerts."""
    settings = config.collapse
    ratio = metrics["entropy"] / baseline["entropy"] if baseline["entropy"] > 0 else 1.0
    drift = abs(metrics["mean_logprob"] - baseline["mean_logprob"])
    found = collapse.alerts(
        ratio,
        metrics["self_rouge_l"],
        drift,
        entropy_ratio_min=settings.entropy_ratio_min,
        rouge_max=settings.self_rouge_max,
        drift_max=settings.drift_max,
    )
    return {**metrics, "entropy_ratio": ratio, "drift": drift, "collapse_alert": float(bool(found))}, found


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
