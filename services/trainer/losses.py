"""SDPO losses: pure functions on tensors (no I/O, no model).

Paper: "Self-Distillation Policy Optimization" (SDPO), hindsight self-distillation: the model, shown the
user's feedback after the fact, is the teacher of the same model without it. The ``token`` loss is the
online trainer of the "learning from user interactions" paper: a PPO-clipped policy gradient whose
advantage is the teacher-minus-student log-probability of the sampled token.

Shapes: B sequences, T response positions (right-padded), K support ids per position, V vocabulary.
A "(K+1)-way" tensor holds log-probabilities of the K support ids followed by one tail bucket with all
the remaining mass, so that each row is a whole distribution (nothing is renormalised away).
``mask`` [B, T] is true on real response tokens. Padded positions must hold finite values (zeros will
do); everything stays finite there and contributes neither loss nor gradient.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from services.trainer.config import ConfigError, SdpoConfig

# Log-probabilities are floored here before they enter a divergence: a teacher may send -inf (or
# "a large negative") for an empty tail, and exp(-1e4) is 0 in every float type, so the floor changes
# no probability while keeping every difference of log-probabilities finite (0 * inf would be NaN).
# Teacher log-probs come from outside and are also capped at 0, so that padding cannot overflow exp.
LOGPROB_FLOOR = -1.0e4
# Ratios exp(a - b) are formed from log-ratios clamped here: e^20 ~ 5e8 is far outside any trust region,
# and garbage in padded positions cannot overflow to inf (whose gradient, even masked, is NaN).
MAX_LOG_RATIO = 20.0


@dataclass(frozen=True)
class SdpoBatch:
    """Everything ``sdpo_loss`` needs for one step. Only ``student_*`` carry gradient.

    student_support: [B, T, K+1] student log-probs on the support plus tail (``student_support_logprobs``).
    teacher_support: [B, T, K+1] teacher log-probs on the same support plus tail.
    student_tokens: [B, T] log pi_theta(y_t) of the sampled tokens.
    sampled_logprobs: [B, T] behaviour log-probs the serving model recorded for y_t.
    teacher_tokens: [B, T] log pi_T(y_t).
    mask: [B, T] true on real response tokens.
    neutral_support / neutral_tokens: the teacher under the neutral follow-up (contrastive only).
    anchor_support / anchor_tokens: the base policy's log-probs (adapter off) on the student's context
        (contrastive only): the contrastive target is built on them, not on the live student.
    base_tokens: [B, T] log pi_0(y_t) of the base model (KL penalty and its metric).
    """

    student_support: torch.Tensor
    teacher_support: torch.Tensor
    student_tokens: torch.Tensor
    sampled_logprobs: torch.Tensor
    teacher_tokens: torch.Tensor
    mask: torch.Tensor
    neutral_support: torch.Tensor | None = None
    neutral_tokens: torch.Tensor | None = None
    anchor_support: torch.Tensor | None = None
    anchor_tokens: torch.Tensor | None = None
    base_tokens: torch.Tensor | None = None


def student_support_logprobs(
    student_logits: torch.Tensor, support_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student log-probs on a support and on its tail bucket.

    log p_S(v) = z_v - logsumexp_u z_u over the full vocabulary (no renormalisation to the support);
    tail = log sum_{v not in S} p_S(v) = logsumexp of the log-probs with the support entries removed,
    which is exact even when the support holds almost all the mass (1 - sum p_S would cancel).

    Args:
        student_logits: [B, T, V]; half precision is computed in float32.
        support_ids: [B, T, K] int64, distinct ids per position (the teacher's or the student's top-K).
    Returns:
        (support_logprobs [B, T, K], tail_logprob [B, T]); gradient flows to the logits through both.
        The tail is floored at ``LOGPROB_FLOOR`` when the support covers the whole vocabulary.
    """
    if student_logits.dtype in (torch.float16, torch.bfloat16):
        student_logits = student_logits.float()
    logprobs = F.log_softmax(student_logits, dim=-1)
    support = logprobs.gather(-1, support_ids)
    # Remove the support with the most negative finite number rather than -inf: a logsumexp over only
    # -inf has a NaN gradient, this one a finite one (and the scatter zeroes it anyway).
    removed = torch.finfo(logprobs.dtype).min
    rest = logprobs.scatter(-1, support_ids, removed)
    tail = torch.logsumexp(rest, dim=-1).clamp_min(LOGPROB_FLOOR)
    return support, tail


def with_tail(support_logprobs: torch.Tensor, tail_logprob: torch.Tensor) -> torch.Tensor:
    """Concatenate [B, T, K] support log-probs and the [B, T] tail into one (K+1)-way tensor."""
    return torch.cat([support_logprobs, tail_logprob.unsqueeze(-1)], dim=-1)


def generalized_jsd_loss(
    *, student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Per-token generalised Jensen-Shannon divergence between (K+1)-way distributions.

    M = alpha * p_T + (1 - alpha) * p_S,
    l_t = (1 - alpha) * KL(p_S || M) + alpha * KL(p_T || M)              for 0 < alpha < 1,
    l_t = KL(p_T || p_S) = sum p_T (log p_T - log p_S)                   for alpha = 0,
    l_t = KL(p_S || p_T) = sum p_S (log p_S - log p_T)                   for alpha = 1.
    The endpoints use their own formula: the mixture formula is identically 0 there (a known bug of
    the reference), which would train on nothing without saying so.

    log M is formed relative to log p_S: log M = log p_S + g(d), d = log p_T - log p_S, with
    g(d) = log(1 + alpha * expm1(d)) for d <= 0 and d + log(1 + (1 - alpha) * expm1(-d)) for d > 0, so
    that no exp overflows, and g(0) = 0 exactly: identical inputs give exactly 0, not rounding noise.

    Args:
        student_logprobs: [B, T, K+1], carries gradient.
        teacher_logprobs: [B, T, K+1], detached here (the teacher is a target, never trained).
        alpha: in [0, 1].
    Returns:
        [B, T] per-token loss, unreduced and unmasked (``masked_sequence_mean`` reduces it).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    student = student_logprobs.clamp_min(LOGPROB_FLOOR)
    teacher = teacher_logprobs.detach().clamp(LOGPROB_FLOOR, 0.0)
    d = teacher - student
    if alpha == 0.0:
        return (teacher.exp() * d).sum(-1)
    if alpha == 1.0:
        return (student.exp() * -d).sum(-1)
    # Each branch sees only the half-line it is used on, so the branch torch.where discards stays
    # finite and cannot send a NaN gradient through it.
    negative = torch.log1p(alpha * torch.expm1(d.clamp(max=0.0)))
    positive = d.clamp(min=0.0) + torch.log1p((1.0 - alpha) * torch.expm1(-d.clamp(min=0.0)))
    g = torch.where(d > 0, positive, negative)  # log M - log p_S
    kl_student = (student.exp() * -g).sum(-1)
    kl_teacher = (teacher.exp() * (d - g)).sum(-1)
    return (1.0 - alpha) * kl_student + alpha * kl_teacher


def token_policy_loss(
    *,
    student_logprobs: torch.Tensor,
    sampled_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    mask: torch.Tensor,
    clip_epsilon: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO-clipped policy gradient with the teacher-minus-student advantage (the ``token`` loss).

    A_t = sg[log pi_T(y_t) - log pi_theta(y_t)], then A_t -= mean of A over the sequence's masked
    positions (mean-centred per sequence); r_t = exp(log pi_theta(y_t) - log pi_old(y_t)), with log pi_old the
    ``sampled_logprobs``;
    l_t = -min(r_t * A_t, clip(r_t, 1 - eps, 1 + eps) * A_t).

    Args:
        student_logprobs, sampled_logprobs, teacher_logprobs, mask: [B, T]; only the student has gradient.
        clip_epsilon: eps in (0, 1).
    Returns:
        (per-token loss [B, T], clipped [B, T] float: 1 where the clipped term was the active one);
        both are 0 at masked positions. A row without tokens has advantage 0 everywhere.
    """
    mask = mask.bool()
    advantage = torch.where(mask, teacher_logprobs - student_logprobs, 0.0).detach()
    counts = mask.sum(-1, keepdim=True).clamp_min(1)
    advantage = torch.where(mask, advantage - advantage.sum(-1, keepdim=True) / counts, 0.0)
    log_ratio = student_logprobs - sampled_logprobs.detach()
    ratio = log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
    unclipped = -ratio * advantage
    clipped = -ratio.clamp(1.0 - clip_epsilon, 1.0 + clip_epsilon) * advantage
    loss = torch.where(mask, torch.maximum(unclipped, clipped), 0.0)
    clip_active = (mask & (clipped > unclipped)).to(loss.dtype)
    return loss, clip_active


def contrastive_teacher_logprobs(*, teacher: torch.Tensor, neutral: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """The contrastive target: the feedback's shift over a neutral follow-up, applied to an anchor policy.

    target ∝ exp(log p_A + (log p_T - log p_N)), renormalised over the K+1 buckets, with p_A the base
    policy (adapter off) on the student's context. The anchor must not move with training: built on the
    live student the target moves with every step, and built on the student as each job found it, every
    job adds the whole shift again; both compound without bound (measured at 135M: repeated-name spam
    after 20 steps at lr 1e-4 either way). On the base policy the target is a fixed distribution, and
    feedback no more informative than the neutral follow-up pulls the adapter back to the base model.
    Any hindsight block shifts log-probs (≈ -0.14 nats/token at 135M, even an unrelated follow-up), and
    plain SDPO teaches that shift whatever the feedback said. The neutral teacher sees the same block
    with a neutral follow-up instead of the feedback, so the shared shift cancels in log p_T - log p_N.
    If the feedback says no more than the neutral follow-up, the target equals the anchor: a relevance
    gate. All three must be on the same support (the student's, or the teacher's ids gathered by both
    teachers) with the tail last.

    Args:
        teacher, neutral, anchor: [B, T, K+1] log-probs. Returns: [B, T, K+1] detached log-probs.
    For the ``token`` loss the same idea is advantage = log pi_T(y) - log pi_N(y) (``sdpo_loss``).
    """
    shift = teacher.clamp(LOGPROB_FLOOR, 0.0) - neutral.clamp(LOGPROB_FLOOR, 0.0)
    return F.log_softmax(anchor.detach().clamp_min(LOGPROB_FLOOR) + shift, dim=-1).detach()


def importance_weights(
    *, student_logprobs: torch.Tensor, sampled_logprobs: torch.Tensor, is_clip: float
) -> torch.Tensor:
    """Truncated importance weight rho_t = min(exp(sg[log pi_theta(y_t) - log pi_old(y_t)]), c), with
    log pi_old(y_t) the ``sampled_logprobs`` of the behaviour policy.

    Computed as exp(min(log-ratio, log c)), which cannot overflow. Shapes [B, T]; detached.
    """
    log_ratio = (student_logprobs - sampled_logprobs).detach()
    return log_ratio.clamp(max=math.log(is_clip)).exp()


def k3_kl(*, student_logprobs: torch.Tensor, base_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi_theta || pi_0) on the sampled tokens (Schulman, "Approximating KL").

    r = pi_0(y_t) / pi_theta(y_t), k3 = r - 1 - log r >= 0 (0 iff r = 1). y is sampled from (about)
    pi_theta, so this is the standard direction; the reference inverts the ratio. Gradient flows
    through the student; the log-ratio is clamped to ±MAX_LOG_RATIO so padding cannot overflow.
    Shapes [B, T] -> [B, T].
    """
    log_r = (base_logprobs.detach() - student_logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return torch.expm1(log_r) - log_r


def masked_sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's masked tokens, then over the sequences that have any.

    values, mask: [B, T] -> scalar. Sequences without tokens do not count; if none has any, the
    result is 0.0 and still on ``values``' graph (backward works and gives zero gradients).
    """
    mask = mask.bool()
    counts = mask.sum(-1)
    per_sequence = torch.where(mask, values, 0.0).sum(-1) / counts.clamp_min(1)
    present = counts > 0
    return torch.where(present, per_sequence, 0.0).sum() / present.sum().clamp_min(1)


@dataclass(frozen=True)
class SdpoMetrics:
    """The metrics of one SDPO loss evaluation (one micro-batch), as plain floats.

    ``kl`` is the k3 mean when base log-probs are given, else 0; ``is_ratio`` the mean rho;
    ``clip_fraction`` the PPO-clipped tokens (token) or the tokens whose rho was truncated at c (jsd);
    ``tokens`` the number of masked-in tokens; ``teacher_student_gap`` the mean log pi_T(y) - log pi_theta(y).
    """

    loss: float
    distill_loss: float
    kl: float
    is_ratio: float
    clip_fraction: float
    tokens: float
    teacher_student_gap: float

    def as_dict(self) -> dict[str, float]:
        """The namespaced keys (``sdpo/loss``, ...) a log or a dashboard shows."""
        return {f"sdpo/{f.name}": getattr(self, f.name) for f in dataclasses.fields(self)}


def sdpo_loss(batch: SdpoBatch, config: SdpoConfig) -> tuple[torch.Tensor, SdpoMetrics]:
    """The loss of one SDPO step and its metrics.

    jsd:   L = mean_seq mean_t rho_t * l_t       (l_t = ``generalized_jsd_loss``, rho_t truncated IS)
    token: L = mean_seq mean_t PPO term          (``token_policy_loss``)
    and in both + kl_coef * mean_seq mean_t k3_t. With ``config.contrastive`` the teacher is replaced by
    ``contrastive_teacher_logprobs`` (jsd) or by sg[log pi_theta] + log pi_T - log pi_N (token, which
    makes the advantage log pi_T(y) - log pi_N(y) before centring).

    Returns the scalar loss and its ``SdpoMetrics``. Raises ConfigError when the config asks for a
    missing input or names an unknown loss.
    """
    mask = batch.mask.bool()
    rho = importance_weights(
        student_logprobs=batch.student_tokens,
        sampled_logprobs=batch.sampled_logprobs,
        is_clip=config.is_clip,
    )
    per_token, clipped = _per_token_loss(batch, config, rho, mask)
    distill = masked_sequence_mean(per_token, mask)
    kl = distill.new_zeros(())
    if batch.base_tokens is not None:
        kl = masked_sequence_mean(k3_kl(student_logprobs=batch.student_tokens, base_logprobs=batch.base_tokens), mask)
    elif config.kl_coef > 0:
        raise ConfigError("kl_coef", f"kl_coef={config.kl_coef!r} needs the base model's log-probs")
    loss = distill + config.kl_coef * kl
    gap = (batch.teacher_tokens - batch.student_tokens).detach()
    metrics = SdpoMetrics(
        loss=loss.item(),
        distill_loss=distill.item(),
        kl=kl.item(),
        is_ratio=masked_sequence_mean(rho, mask).item(),
        clip_fraction=masked_sequence_mean(clipped, mask).item(),
        tokens=float(mask.sum().item()),
        teacher_student_gap=masked_sequence_mean(gap, mask).item(),
    )
    return loss, metrics


def _per_token_loss(
    batch: SdpoBatch, config: SdpoConfig, rho: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] loss of ``config.loss`` and the [B, T] clipped indicator; an unknown kind is a ConfigError."""
    teacher_support, teacher_tokens = _teachers(batch, config)
    if config.loss == "jsd":
        per_token = rho * generalized_jsd_loss(
            student_logprobs=batch.student_support,
            teacher_logprobs=teacher_support,
            alpha=config.alpha,
        )
        log_ratio = (batch.student_tokens - batch.sampled_logprobs).detach()
        return per_token, (log_ratio > math.log(config.is_clip)).to(per_token.dtype)
    if config.loss == "token":
        return token_policy_loss(
            student_logprobs=batch.student_tokens,
            sampled_logprobs=batch.sampled_logprobs,
            teacher_logprobs=teacher_tokens,
            mask=mask,
            clip_epsilon=config.clip_epsilon,
        )
    raise ConfigError("loss", f"loss must be 'jsd' or 'token', got {config.loss!r}")


def _teachers(batch: SdpoBatch, config: SdpoConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's (K+1)-way and sampled-token log-probs, contrastive when configured."""
    if not config.contrastive:
        return batch.teacher_support, batch.teacher_tokens
    if batch.neutral_support is None or batch.neutral_tokens is None:
        raise ConfigError("contrastive", "contrastive=True needs the neutral teacher's log-probs")
    if batch.anchor_support is None or batch.anchor_tokens is None:
        raise ConfigError("contrastive", "contrastive=True needs the base policy's log-probs (the anchor)")
    support = contrastive_teacher_logprobs(
        teacher=batch.teacher_support, neutral=batch.neutral_support, anchor=batch.anchor_support
    )
    shift = batch.teacher_tokens - batch.neutral_tokens
    tokens = (batch.anchor_tokens + shift).detach()
    return support, tokens
