"""Which LoRA shapes the trainer accepts: one pure function, used by InitAdapter, by every job, and by the
tests' fake engine alike, so the rules and their messages live here only."""

from __future__ import annotations

import math
from collections.abc import Sequence

from services.common.domain import LoraSpec
from services.common.errors import InvalidArgument


def resolve_lora(
    spec: LoraSpec,
    linear_modules: Sequence[str],
    *,
    max_rank: int,
    defaults: LoraSpec | None = None,
) -> LoraSpec:
    """``spec`` made explicit: rank 0 takes ``defaults``' rank and alpha (when given), empty targets mean
    every linear module of the model, targets are sorted and unique.

    Raises InvalidArgument (``param`` rank, alpha, dropout or target_modules) for what the model or the
    serving side (vLLM's ``max_lora_rank``) would refuse.
    """
    if spec.rank == 0 and defaults is not None:
        spec = LoraSpec(rank=defaults.rank, alpha=defaults.alpha, target_modules=spec.target_modules)
    if not 1 <= spec.rank <= max_rank:
        raise InvalidArgument(
            f"LoRA rank must be in [1, {max_rank}] (the serving limit), got {spec.rank}", param="rank"
        )
    if spec.alpha <= 0:
        raise InvalidArgument(f"LoRA alpha must be > 0, got {spec.alpha}", param="alpha")
    if not (0.0 <= spec.dropout < 1.0 and math.isfinite(spec.dropout)):
        raise InvalidArgument(f"LoRA dropout must be in [0, 1), got {spec.dropout}", param="dropout")
    unknown = sorted(set(spec.target_modules) - set(linear_modules))
    if unknown:
        raise InvalidArgument(
            f"unknown LoRA target modules {unknown}; this model has {list(linear_modules)}",
            param="target_modules",
        )
    targets = tuple(sorted(set(spec.target_modules))) or tuple(linear_modules)
    return LoraSpec(rank=spec.rank, alpha=spec.alpha, target_modules=targets, dropout=float(spec.dropout))
