"""Preferences as YAML files: the feedback, its verifier, the prompts and the teacher-forced probes.

Three are built in (``builtin/*.yaml``: identity, concise, no_emoji); any other file a user writes in the
same shape works the same. ``claas demo`` reads the same files.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.cli.eval.verifiers import VERIFIERS, Verdict

BUILTIN_DIR = Path(__file__).parent / "builtin"
#: The token a decision point's ``target`` names for "the answer ends here".
END_OF_TURN = "<eot>"


class PreferenceError(ValueError):
    """A preference that cannot be loaded: names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogprobPair(_Strict):
    """Two answers to one prompt; the margin is log p(preferred) - log p(dispreferred)."""

    prompt: str = Field(min_length=1)
    preferred: str = Field(min_length=1)
    dispreferred: str = Field(min_length=1)


class DecisionPoint(_Strict):
    """Where the preference is decided: the probability of ``target`` (all of its tokens) right after the
    assistant wrote ``prefix`` in answer to ``prompt``. ``<eot>`` is the end-of-turn token."""

    prompt: str = Field(min_length=1)
    prefix: str
    target: str = Field(min_length=1)


class DemoSignal(_Strict):
    """``claas demo``'s local teacher-forced signal: the probability of ``token`` (all of its tokens) after each
    prefix (see services/cli/probes.py)."""

    prefixes: tuple[str, ...]
    token: str


class Preference(_Strict):
    """A preference an adapter is taught and how it is checked."""

    name: str = Field(min_length=1, pattern=r"^[a-z0-9_-]+$")
    feedback: str = Field(min_length=1)
    verifier: Literal["identity", "concise", "no_emoji"]
    #: What the identity verifier looks for, as a whole word (the name).
    target: str = ""
    #: Prompts the rollouts are chatted with; feedback is given on those answers.
    probe_prompts: tuple[str, ...] = Field(min_length=1)
    #: Prompts never trained on: compliance and the judge read answers to these.
    held_out: tuple[str, ...] = Field(min_length=1)
    logprob_pairs: tuple[LogprobPair, ...] = Field(min_length=1)
    decision_points: tuple[DecisionPoint, ...] = ()
    #: Whether learning shows as a higher or a lower decision-point probability.
    decision_direction: Literal["higher", "lower"] = "higher"
    #: Longest held-out answer, replacing the run's ``eval_max_tokens``: a verifier that counts sentences
    #: must see where an answer ends on its own, not where the token limit cut it.
    eval_max_tokens: int | None = Field(None, ge=1, le=1024)
    demo: DemoSignal | None = None

    @model_validator(mode="after")
    def _identity_has_a_target(self) -> Preference:
        if self.verifier == "identity" and not self.target.strip():
            raise ValueError("the identity verifier needs `target` (the name to find)")
        return self

    def verify(self, answer: str) -> Verdict:
        return VERIFIERS[self.verifier](answer, self.target)

    def passes(self, answer: str) -> bool:
        return self.verify(answer).passed

    @property
    def signal_prefixes(self) -> tuple[str, ...]:
        return self.demo.prefixes if self.demo else ()

    @property
    def signal_token(self) -> str:
        return self.demo.token if self.demo else ""


def _where(error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return f"{key}: {first['msg']}"


def load_file(path: Path) -> Preference:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PreferenceError(f"{path}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise PreferenceError(f"{path}: a preference file holds a mapping of keys (name, feedback, ...)")
    try:
        return Preference.model_validate(data)
    except ValidationError as exc:
        raise PreferenceError(f"{path}: {_where(exc)}") from None


@cache
def builtin() -> dict[str, Preference]:
    """The built-in preferences by name."""
    loaded = (load_file(path) for path in sorted(BUILTIN_DIR.glob("*.yaml")))
    return {p.name: p for p in loaded}


def load(spec: str) -> Preference:
    """A built-in preference by name, or a YAML file by path."""
    if spec in builtin():
        return builtin()[spec]
    path = Path(spec).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise PreferenceError(f"{path}: no such preference file")
        return load_file(path)
    raise PreferenceError(f"unknown preference {spec!r}: built in are {', '.join(sorted(builtin()))}, or give a file")
