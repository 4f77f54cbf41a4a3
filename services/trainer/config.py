"""The SDPO hyperparameters of one training job, in the paper's symbols.

One frozen object, validated when it is created; every rejection names the field and quotes the bad
value. ``ConfigError`` is a plain ``ValueError`` so this module stays free of gRPC: ``validation.job_config``
turns it into ``INVALID_ARGUMENT`` (``param`` carries the field name for the HTTP envelope).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

LossKind = Literal["jsd", "token"]
SupportKind = Literal["teacher", "student"]
TeacherMode = Literal["base", "self", "trust_region"]
TemplateName = Literal["hindsight", "sdpo"]

MAX_TOP_K = 1000
MAX_STEPS = 64
MAX_NEUTRAL_FOLLOWUP_CHARS = 500
MAX_GUIDED_ROLLOUTS = 8
MAX_GUIDED_TOKENS = 512


class ConfigError(ValueError):
    """An SDPO hyperparameter is out of range; ``param`` is the offending field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class SdpoConfig:
    """Hyperparameters of one SDPO job (see DESIGN §5 for the equations they enter)."""

    loss: LossKind = field(
        default="jsd",
        metadata={
            "help": '"jsd": generalised JSD between the (K+1)-way teacher and student '
            'distributions, weighted by the importance weight rho. "token": PPO-clipped '
            "policy gradient with advantage log pi_T(y) - log pi_theta(y)."
        },
    )
    alpha: float = field(
        default=0.0,
        metadata={
            "help": "alpha of the generalised JSD, in [0, 1]. 0 is KL(p_T||p_S) (forward KL, "
            "learned identity best at 135M), 1 is KL(p_S||p_T); each endpoint uses its own formula."
        },
    )
    top_k: int = field(
        default=100,
        metadata={
            "help": f"K, the size of the per-position support (plus one tail bucket), 1..{MAX_TOP_K}. "
            "100 suits the hf teacher; vLLM caps its logprobs at 20 by default."
        },
    )
    support: SupportKind = field(
        default="teacher",
        metadata={
            "help": '"teacher": the teacher\'s top-K ids (every backend). "student": the student\'s '
            "top-K ids, gathered by the teacher (hf backend only; the SDPO reference's choice)."
        },
    )
    learning_rate: float = field(
        default=2e-4,
        metadata={
            "help": "AdamW learning rate, in (0, 1]; applied on every step, also after the optimizer "
            "state is restored. 1e-4..5e-4 for a 135M model with LoRA, about 1e-5 for 8B-class models."
        },
    )
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1, in [0, 1)."})
    beta2: float = field(default=0.999, metadata={"help": "AdamW beta2, in [0, 1)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay, >= 0."})
    steps: int = field(
        default=4,
        metadata={
            "help": f"Optimizer steps per job, 1..{MAX_STEPS}. Measured at 135M, lr 2e-4, 5 jobs: 6 steps teach names "
            'with a rare first token faster (" Milo" to p 0.10, 4 steps 0.002-0.006) but made "Kuro" loop more; '
            "8 made names repeat. With the guard's fallback a job that went too far commits its halfway step."
        },
    )
    is_clip: float = field(
        default=2.0,
        metadata={
            "help": "c, the truncation of the importance weight rho = min(pi_theta(y)/pi_old(y), c); "
            ">= 1 (1 caps rho at on-policy)."
        },
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient-norm clip applied before each step, > 0."})
    kl_coef: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the k3 estimate of KL(pi_theta||pi_0) to the base model, >= 0; 0 disables the penalty."
        },
    )
    clip_epsilon: float = field(
        default=0.2,
        metadata={"help": 'PPO clip epsilon of the "token" loss, in (0, 1).'},
    )
    teacher_mode: TeacherMode = field(
        default="base",
        metadata={
            "help": '"base": the frozen base model. "self": the adapter\'s current version. '
            '"trust_region": logits (1 - mu) * z_base + mu * z_adapter.'
        },
    )
    trust_region_mu: float = field(
        default=0.5,
        metadata={"help": 'mu of the "trust_region" teacher, in [0, 1] (0 is "base", 1 is "self").'},
    )
    contrastive: bool = field(
        default=False,
        metadata={
            "help": "Subtract the teacher's signal under a neutral follow-up, so that the shift any "
            "hindsight block causes cancels and uninformative feedback yields (almost) no update."
        },
    )
    neutral_followup: str = field(
        default="By the way, what is 27*4?",
        metadata={
            "help": "The neutral follow-up of the contrastive baseline; non-empty, at most "
            f"{MAX_NEUTRAL_FOLLOWUP_CHARS} characters."
        },
    )
    template: TemplateName = field(
        default="hindsight",
        metadata={"help": 'Hindsight prompt template: "hindsight" or "sdpo".'},
    )

    guided_rollouts: int = field(
        default=1,
        metadata={
            "help": "Teacher-guided rollouts per sample, 0.."
            f"{MAX_GUIDED_ROLLOUTS}: responses sampled from the base model under the hindsight prompt, "
            "trained on beside the user's rollouts (their importance weights are taken against the student as "
            "the job found it). On-policy rollouts rarely contain what the feedback asks for, so the teacher's "
            "signal for the later tokens of a name never arrives; 0 turns them off."
        },
    )
    guided_max_tokens: int = field(
        default=40,
        metadata={"help": f"Longest teacher-guided rollout in tokens, 1..{MAX_GUIDED_TOKENS}."},
    )

    greedy_max_tokens: int = field(
        default=0,
        metadata={
            "help": f"Length of the student's own greedy answer to each distinct prompt of the job, trained on "
            f"beside the user's rollouts, 0..{MAX_GUIDED_TOKENS}; 0 turns it off. Greedy answers are what a user "
            "reads, and where a small model loops after a learned word; sampled rollouts rarely take that path."
        },
    )

    def __post_init__(self) -> None:
        _choice("loss", self.loss, ("jsd", "token"))
        _number("alpha", self.alpha, 0.0, 1.0)
        _integer("top_k", self.top_k, 1, MAX_TOP_K)
        _choice("support", self.support, ("teacher", "student"))
        _number("learning_rate", self.learning_rate, 0.0, 1.0, low_open=True)
        _number("beta1", self.beta1, 0.0, 1.0, high_open=True)
        _number("beta2", self.beta2, 0.0, 1.0, high_open=True)
        _number("weight_decay", self.weight_decay, 0.0, math.inf)
        _integer("steps", self.steps, 1, MAX_STEPS)
        _number("is_clip", self.is_clip, 1.0, math.inf)
        _number("max_grad_norm", self.max_grad_norm, 0.0, math.inf, low_open=True)
        _number("kl_coef", self.kl_coef, 0.0, math.inf)
        _number("clip_epsilon", self.clip_epsilon, 0.0, 1.0, low_open=True, high_open=True)
        _choice("teacher_mode", self.teacher_mode, ("base", "self", "trust_region"))
        _number("trust_region_mu", self.trust_region_mu, 0.0, 1.0)
        if not isinstance(self.contrastive, bool):
            raise ConfigError("contrastive", f"contrastive must be a bool, got {self.contrastive!r}")
        _followup(self.neutral_followup)
        _choice("template", self.template, ("hindsight", "sdpo"))
        _integer("guided_rollouts", self.guided_rollouts, 0, MAX_GUIDED_ROLLOUTS)
        _integer("guided_max_tokens", self.guided_max_tokens, 1, MAX_GUIDED_TOKENS)
        _integer("greedy_max_tokens", self.greedy_max_tokens, 0, MAX_GUIDED_TOKENS)

    def with_overrides(self, **overrides: Any) -> SdpoConfig:
        """A validated copy with the given fields replaced; ``None`` means "keep this field".

        The servicer passes the proto's optional fields as they are: unset ones arrive as ``None``.
        """
        known = {f.name for f in dataclasses.fields(self)}
        for name in overrides:
            if name not in known:
                raise ConfigError(name, f"unknown SDPO config field {name!r}")
        changes = {name: value for name, value in overrides.items() if value is not None}
        return dataclasses.replace(self, **changes)


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(name, f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _number(
    name: str,
    value: object,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    if math.isinf(high):
        interval = f"{'>' if low_open else '>='} {low:g}"
    else:
        interval = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    # bool is an int subclass; True as a learning rate is a caller bug, not 1.0.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(name, f"{name} must be a number {interval}, got {value!r}")
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    # Written so that NaN fails both comparisons; infinity is never a useful hyperparameter.
    if not (above and below and math.isfinite(value)):
        raise ConfigError(name, f"{name} must be {interval}, got {value!r}")


def _integer(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(name, f"{name} must be an integer in [{low}, {high}], got {value!r}")


def _followup(value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("neutral_followup", f"neutral_followup must be a non-empty string, got {value!r}")
    if len(value) > MAX_NEUTRAL_FOLLOWUP_CHARS:
        raise ConfigError(
            "neutral_followup",
            f"neutral_followup must be at most {MAX_NEUTRAL_FOLLOWUP_CHARS} characters, "
            f"got {len(value)}: {value[:40]!r}...",
        )
