"""``lora.resolve_lora``: the LoRA shapes the trainer accepts, with the message and param of each refusal."""

from __future__ import annotations

import math

import pytest

from services.common.domain import LoraSpec
from services.common.errors import InvalidArgument
from services.trainer.lora import resolve_lora

LINEAR = ("down_proj", "k_proj", "q_proj", "v_proj")
DEFAULTS = LoraSpec(rank=16, alpha=32)


def _resolve(spec: LoraSpec, defaults: LoraSpec | None = None) -> LoraSpec:
    return resolve_lora(spec, LINEAR, max_rank=16, defaults=defaults)


def test_a_valid_spec_gets_its_targets_sorted_and_unique() -> None:
    spec = LoraSpec(rank=8, alpha=16, target_modules=("v_proj", "q_proj", "v_proj"), dropout=0.05)
    assert _resolve(spec) == LoraSpec(rank=8, alpha=16, target_modules=("q_proj", "v_proj"), dropout=0.05)


def test_no_targets_means_every_linear_module() -> None:
    assert _resolve(LoraSpec(rank=4, alpha=8)).target_modules == LINEAR


def test_rank_0_takes_the_defaults_and_keeps_the_requested_targets() -> None:
    resolved = _resolve(LoraSpec(rank=0, alpha=3, target_modules=("q_proj",), dropout=0.5), DEFAULTS)
    # The default shape replaces rank and alpha; dropout goes back to 0 with them.
    assert resolved == LoraSpec(rank=16, alpha=32, target_modules=("q_proj",), dropout=0.0)


def test_the_rank_limit_is_inclusive() -> None:
    assert _resolve(LoraSpec(rank=16, alpha=1)).rank == 16
    assert _resolve(LoraSpec(rank=1, alpha=1)).rank == 1


@pytest.mark.parametrize(
    ("spec", "message", "param"),
    [
        (LoraSpec(rank=0, alpha=8), "LoRA rank must be in [1, 16] (the serving limit), got 0", "rank"),
        (LoraSpec(rank=17, alpha=8), "LoRA rank must be in [1, 16] (the serving limit), got 17", "rank"),
        (LoraSpec(rank=-1, alpha=8), "LoRA rank must be in [1, 16] (the serving limit), got -1", "rank"),
        (LoraSpec(rank=4, alpha=0), "LoRA alpha must be > 0, got 0", "alpha"),
        (LoraSpec(rank=4, alpha=-2), "LoRA alpha must be > 0, got -2", "alpha"),
        (LoraSpec(rank=4, alpha=8, dropout=1.0), "LoRA dropout must be in [0, 1), got 1.0", "dropout"),
        (LoraSpec(rank=4, alpha=8, dropout=-0.1), "LoRA dropout must be in [0, 1), got -0.1", "dropout"),
        (LoraSpec(rank=4, alpha=8, dropout=math.nan), "LoRA dropout must be in [0, 1), got nan", "dropout"),
        (
            LoraSpec(rank=4, alpha=8, target_modules=("q_proj", "lm_head", "embed")),
            "unknown LoRA target modules ['embed', 'lm_head']; this model has "
            "['down_proj', 'k_proj', 'q_proj', 'v_proj']",
            "target_modules",
        ),
    ],
)
def test_each_invalid_shape_is_refused_with_its_message_and_param(spec: LoraSpec, message: str, param: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        _resolve(spec)
    assert caught.value.message == message
    assert caught.value.param == param


def test_rank_0_without_defaults_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="got 0"):
        _resolve(LoraSpec())
