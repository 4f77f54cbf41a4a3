"""Collapse signals: entropy of the top-20 next-token distribution, self-ROUGE-L of samples, log-prob drift.

Alert thresholds as the reference harness uses them: entropy below 0.6 of the baseline's, self-ROUGE-L above
0.85 (samples at T = 0.7 nearly identical), mean chosen-token log-prob moved by more than 2 nats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from typing import Any

COLLAPSE_PROMPT = "Tell me something interesting about the ocean."


def mean_entropy(content: Sequence[dict[str, Any]]) -> float:
    """Mean over positions of the entropy (nats) of the top-k alternatives, renormalised over those k."""
    entropies = []
    for position in content:
        probs = [math.exp(alt["logprob"]) for alt in position.get("top_logprobs") or ()]
        total = sum(probs)
        if total <= 0:
            continue
        entropies.append(-sum(p / total * math.log(p / total) for p in probs if p > 0))
    return sum(entropies) / len(entropies) if entropies else 0.0


def mean_logprob(content: Sequence[dict[str, Any]]) -> float:
    """Mean log-prob of the tokens that were generated."""
    values = [position["logprob"] for position in content]
    return sum(values) / len(values) if values else 0.0


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(a: str, b: str) -> float:
    """Word-level ROUGE-L F1."""
    wa, wb = a.split(), b.split()
    if not wa or not wb:
        return 0.0
    lcs = _lcs(wa, wb)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(wb), lcs / len(wa)
    return 2 * precision * recall / (precision + recall)


def self_rouge_l(samples: Sequence[str]) -> float:
    """Mean pairwise ROUGE-L of the samples (1.0 = every sample the same text)."""
    pairs = list(combinations(samples, 2))
    return sum(rouge_l(a, b) for a, b in pairs) / len(pairs) if pairs else 0.0


def alerts(
    entropy_ratio: float,
    self_rouge: float,
    drift: float,
    *,
    entropy_ratio_min: float,
    rouge_max: float,
    drift_max: float,
) -> list[str]:
    """Which collapse thresholds the measurement crossed (empty: none)."""
    found = []
    if entropy_ratio < entropy_ratio_min:
        found.append(f"entropy ratio {entropy_ratio:.2f} < {entropy_ratio_min}")
    if self_rouge > rouge_max:
        found.append(f"self-ROUGE-L {self_rouge:.2f} > {rouge_max}")
    if drift > drift_max:
        found.append(f"log-prob drift {drift:.2f} > {drift_max}")
    return found
