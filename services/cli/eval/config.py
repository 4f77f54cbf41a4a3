"""The run's configuration: a YAML file plus ``key=value`` overrides, validated, printed at the start."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.cli.preferences import CONTROL_FEEDBACK, SYSTEM_PROMPT


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SdpoOverrides(_Section):
    """What each feedback asks the trainer for beyond its defaults (field names of SdpoConfig). Unset fields
    are not sent: the server's defaults are the eval's, as they are the demo's and every user's."""

    steps: int | None = Field(None, ge=1, le=64)
    learning_rate: float | None = Field(None, gt=0, le=1e-2)
    alpha: float | None = Field(None, ge=0, le=1)
    contrastive: bool | None = None
    guided_rollouts: int | None = Field(None, ge=0, le=8)
    guided_max_tokens: int | None = Field(None, ge=1, le=512)

    def overrides(self) -> dict[str, object]:
        """The fields set, as the feedback's ``config``."""
        return self.model_dump(exclude_none=True)


class LoraSection(_Section):
    rank: int = Field(16, ge=1, le=256)
    alpha: int = Field(32, ge=1)


class CollapseConfig(_Section):
    """Collapse probes and the alert thresholds."""

    samples: int = Field(3, ge=2, le=8)
    temperature: float = Field(0.7, gt=0, le=2)
    top_logprobs: int = Field(20, ge=1, le=20)
    max_tokens: int = Field(60, ge=4, le=1024)
    entropy_ratio_min: float = 0.6
    self_rouge_max: float = 0.85
    drift_max: float = 2.0


class GeneralConfig(_Section):
    """General-capability probes (coding in the sandbox, instruction following)."""

    enabled: bool = True
    max_tokens: int = Field(160, ge=8, le=2048)
    timeout_s: float = Field(5.0, gt=0, le=60)
    memory_mb: int = Field(256, ge=64, le=4096)


class JudgeConfig(_Section):
    """An OpenAI-compatible model that compares answers before and after (pairwise win-rate)."""

    enabled: bool = False
    base_url: str = ""
    model: str = ""
    #: Name of the environment variable that holds the judge's API key ("" = none needed).
    api_key_env: str = ""
    max_tokens: int = Field(8, ge=1, le=256)

    @model_validator(mode="after")
    def _endpoint_when_enabled(self) -> JudgeConfig:
        if self.enabled and not (self.base_url and self.model):
            raise ValueError("an enabled judge needs judge.base_url and judge.model")
        return self


class RunConfig(_Section):
    """Everything a run does. Steps count rounds of rollouts -> feedback -> measurement."""

    preferences: list[str] = Field(default_factory=lambda: ["identity"], min_length=1)
    steps: int = Field(10, ge=1, le=200)
    rollouts_per_step: int = Field(4, ge=1, le=32)
    rollout_max_tokens: int = Field(40, ge=1, le=1024)
    rollout_temperature: float = Field(1.0, ge=0, le=2)
    eval_max_tokens: int = Field(60, ge=1, le=1024)
    seed: int = 0
    system_prompt: str = SYSTEM_PROMPT
    control_feedback: str = Field(CONTROL_FEEDBACK, min_length=1)
    sdpo: SdpoOverrides = Field(default_factory=SdpoOverrides)
    lora: LoraSection = Field(default_factory=LoraSection)
    collapse: CollapseConfig = Field(default_factory=CollapseConfig)
    general: GeneralConfig = Field(default_factory=GeneralConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
        node = child
    node[leaf] = value


def _explain(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        given = f" (got {item['input']!r})" if item["type"] != "missing" and not isinstance(item["input"], dict) else ""
        lines.append(f"{key}: {item['msg']}{given}")
    return "; ".join(lines)


def load_config(path: Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """The file's settings (if any), then each ``key=value`` (dotted keys reach sections: ``sdpo.steps=2``;
    values are read as YAML, so ``preferences=[identity,concise]`` is a list)."""
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config file holds a mapping of keys")
        tree = loaded
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {override!r}: write key=value (e.g. steps=2)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set(tree, key.strip(), value)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"config: {_explain(exc)}") from None


def describe(config: RunConfig) -> str:
    """The whole configuration, as YAML, for the start of the run's output."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
