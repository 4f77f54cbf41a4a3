"""SdpoConfig: defaults, validation messages, overrides."""

from __future__ import annotations

import dataclasses
import math

import pytest

from services.trainer.config import ConfigError, SdpoConfig


def test_defaults_are_the_design_defaults() -> None:
    config = SdpoConfig()
    assert (config.loss, config.alpha, config.top_k, config.support) == ("jsd", 0.0, 100, "teacher")
    assert (config.learning_rate, config.beta1, config.beta2) == (2e-4, 0.9, 0.999)
    assert (config.steps, config.is_clip, config.max_grad_norm) == (4, 2.0, 1.0)
    assert (config.kl_coef, config.clip_epsilon, config.weight_decay) == (0.0, 0.2, 0.0)
    assert (config.teacher_mode, config.trust_region_mu) == ("base", 0.5)
    assert config.contrastive is False
    assert config.neutral_followup == "By the way, what is 27*4?"
    assert config.template == "hindsight"
    assert (config.guided_rollouts, config.guided_max_tokens) == (1, 40)


def test_every_field_is_documented() -> None:
    for f in dataclasses.fields(SdpoConfig):
        assert f.metadata.get("help", "").strip(), f.name


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SdpoConfig().alpha = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("loss", "kl"),
        ("alpha", -0.1),
        ("alpha", 1.5),
        ("alpha", math.nan),
        ("top_k", 0),
        ("top_k", 1001),
        ("top_k", 2.5),
        ("top_k", True),
        ("support", "both"),
        ("learning_rate", 0.0),
        ("learning_rate", 2.0),
        ("learning_rate", "1e-4"),
        ("beta1", 1.0),
        ("beta2", -0.5),
        ("weight_decay", -1e-3),
        ("weight_decay", math.inf),
        ("steps", 0),
        ("steps", 65),
        ("is_clip", 0.5),
        ("max_grad_norm", 0.0),
        ("kl_coef", -0.1),
        ("clip_epsilon", 0.0),
        ("clip_epsilon", 1.0),
        ("teacher_mode", "remote"),
        ("trust_region_mu", 1.01),
        ("contrastive", 1),
        ("neutral_followup", "   "),
        ("template", "chatml"),
        ("guided_rollouts", -1),
        ("guided_rollouts", 9),
        ("guided_max_tokens", 0),
        ("guided_max_tokens", 513),
        ("greedy_max_tokens", -1),
        ("greedy_max_tokens", 513),
    ],
)
def test_rejection_names_the_field_and_the_value(name: str, value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        SdpoConfig(**{name: value})
    message = str(caught.value)
    assert message.startswith(name), message
    assert repr(value) in message, message
    assert caught.value.param == name
    assert isinstance(caught.value, ValueError)


def test_overlong_neutral_followup_is_rejected_with_its_length() -> None:
    with pytest.raises(ConfigError, match=r"neutral_followup must be at most 500 characters, got 501"):
        SdpoConfig(neutral_followup="x" * 501)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("alpha", 0.0),
        ("alpha", 1.0),
        ("top_k", 1),
        ("top_k", 1000),
        ("steps", 64),
        ("is_clip", 1.0),
        ("guided_rollouts", 0),
        ("guided_rollouts", 8),
        ("greedy_max_tokens", 0),
        ("greedy_max_tokens", 512),
    ],
)
def test_boundaries_that_are_allowed(name: str, value: object) -> None:
    assert getattr(SdpoConfig(**{name: value}), name) == value


def test_with_overrides_ignores_none_and_keeps_the_rest() -> None:
    base = SdpoConfig(alpha=0.5)
    config = base.with_overrides(loss="token", alpha=None, steps=8, teacher_mode=None)
    assert (config.loss, config.alpha, config.steps, config.teacher_mode) == ("token", 0.5, 8, "base")
    assert base.loss == "jsd"


def test_with_overrides_validates() -> None:
    with pytest.raises(ConfigError, match=r"is_clip must be >= 1, got 0.25") as caught:
        SdpoConfig().with_overrides(is_clip=0.25)
    assert caught.value.param == "is_clip"


def test_with_overrides_rejects_an_unknown_field() -> None:
    with pytest.raises(ConfigError, match="unknown SDPO config field 'beta'") as caught:
        SdpoConfig().with_overrides(beta=0.1)
    assert caught.value.param == "beta"
