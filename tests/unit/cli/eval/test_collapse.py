"""Collapse signals on hand-made inputs."""

from __future__ import annotations

import math

import pytest

from services.cli.eval.collapse import alerts, mean_entropy, mean_logprob, rouge_l, self_rouge_l


def test_rouge_l() -> None:
    assert rouge_l("the cat sat", "the cat sat") == 1.0
    assert rouge_l("a b c d", "e f g h") == 0.0
    assert rouge_l("the cat sat on the mat", "the cat lay on a mat") == pytest.approx(4 / 6)
    assert rouge_l("", "x") == 0.0


def test_self_rouge_l_of_identical_samples_is_one() -> None:
    assert self_rouge_l(["same text here"] * 3) == 1.0
    assert self_rouge_l(["one two", "three four", "five six"]) == 0.0


def test_entropy_of_top_logprobs_is_renormalised() -> None:
    uniform = [{"logprob": math.log(0.1)} for _ in range(4)]  # four equal alternatives, mass 0.4
    content = [{"logprob": math.log(0.1), "top_logprobs": uniform}]
    assert mean_entropy(content) == pytest.approx(math.log(4))
    certain = [{"logprob": 0.0, "top_logprobs": [{"logprob": 0.0}]}]
    assert mean_entropy(certain) == 0.0
    assert mean_logprob(content + certain) == pytest.approx(math.log(0.1) / 2)
    assert mean_entropy([]) == 0.0


def test_alerts_at_the_thresholds() -> None:
    limits = {"entropy_ratio_min": 0.6, "rouge_max": 0.85, "drift_max": 2.0}
    assert alerts(1.0, 0.4, 0.1, **limits) == []
    found = alerts(0.5, 0.9, 2.5, **limits)
    assert len(found) == 3 and "entropy ratio 0.50" in found[0]
