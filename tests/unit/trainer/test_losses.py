"""SDPO losses on tiny CPU tensors, against values computed here by hand (python/numpy)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from services.trainer.config import ConfigError, SdpoConfig
from services.trainer.losses import (
    SdpoBatch,
    contrastive_teacher_logprobs,
    generalized_jsd_loss,
    importance_weights,
    k3_kl,
    masked_sequence_mean,
    sdpo_loss,
    student_support_logprobs,
    token_policy_loss,
    with_tail,
)

F64 = torch.float64


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * np.log(p / q)))


def _log(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=F64).log()


def _random_logits(seed: int, shape: tuple[int, ...] = (2, 3, 9)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# Two (K+1)-way distributions (K = 3) that differ, as [1, 1, 4] log-prob tensors.
P_STUDENT = np.array([0.5, 0.2, 0.2, 0.1])
P_TEACHER = np.array([0.1, 0.6, 0.1, 0.2])


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    student = torch.tensor(np.log(P_STUDENT), dtype=F64).view(1, 1, 4).requires_grad_()
    teacher = torch.tensor(np.log(P_TEACHER), dtype=F64).view(1, 1, 4)
    return student, teacher


# --- student_support_logprobs ---------------------------------------------------------------


def _student_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    return logits.topk(k, dim=-1).indices


def _arbitrary_ids(logits: torch.Tensor, k: int) -> torch.Tensor:
    b, t, v = logits.shape
    ids = [[[(3 * i + 5 * j + 2 * n) % v for n in range(k)] for j in range(t)] for i in range(b)]
    return torch.tensor(ids)


@pytest.mark.parametrize("choose", [_student_top_k, _arbitrary_ids], ids=["student-top-k", "arbitrary"])
def test_support_and_tail_match_a_hand_softmax_and_sum_to_one(choose) -> None:
    logits = _random_logits(0)
    ids = choose(logits, 4)
    support, tail = student_support_logprobs(logits, ids)
    for i in range(2):
        for j in range(3):
            z = logits[i, j].numpy()
            p = np.exp(z) / np.exp(z).sum()
            chosen = ids[i, j].tolist()
            assert len(set(chosen)) == 4
            np.testing.assert_allclose(support[i, j].numpy(), np.log(p[chosen]), rtol=1e-12)
            rest = [p[v] for v in range(9) if v not in chosen]
            assert tail[i, j].item() == pytest.approx(math.log(sum(rest)), rel=1e-12)
    total = with_tail(support, tail).exp().sum(-1)
    torch.testing.assert_close(total, torch.ones(2, 3, dtype=F64), rtol=0, atol=1e-12)


def test_tail_is_exact_when_the_support_holds_nearly_all_mass() -> None:
    # 1 - p(support) is 0 in float32 here; the tail is still log(3 e^0 / (e^30 + 3)).
    logits = torch.tensor([[[30.0, 0.0, 0.0, 0.0]]])
    _, tail = student_support_logprobs(logits, torch.tensor([[[0]]]))
    assert tail.item() == pytest.approx(math.log(3.0) - 30.0 - math.log1p(3 * math.exp(-30)), rel=1e-6)


def test_support_covering_the_vocabulary_has_a_floored_tail_and_finite_gradients() -> None:
    logits = _random_logits(1, (1, 2, 4)).requires_grad_()
    ids = torch.tensor([[[3, 1, 0, 2], [0, 1, 2, 3]]])
    support, tail = student_support_logprobs(logits, ids)
    assert torch.all(tail == -1.0e4)
    teacher = with_tail(support, tail).detach().roll(1, dims=-1)
    loss = generalized_jsd_loss(student_logprobs=with_tail(support, tail), teacher_logprobs=teacher, alpha=0.5).sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_half_precision_logits_are_computed_in_float32() -> None:
    logits = _random_logits(2).to(torch.bfloat16)
    support, tail = student_support_logprobs(logits, _student_top_k(logits, 3))
    assert support.dtype == tail.dtype == torch.float32


@pytest.mark.parametrize("choose", [_student_top_k, _arbitrary_ids], ids=["student-top-k", "arbitrary"])
def test_support_logprobs_gradcheck(choose) -> None:
    logits = _random_logits(3, (2, 2, 6)).requires_grad_()
    ids = choose(logits.detach(), 3)
    assert torch.autograd.gradcheck(lambda z: student_support_logprobs(z, ids), (logits,))


# --- generalized_jsd_loss ------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.5, 0.3, 0.9])
def test_jsd_matches_the_hand_mixture_formula(alpha: float) -> None:
    student, teacher = _pair()
    mix = alpha * P_TEACHER + (1 - alpha) * P_STUDENT
    expected = (1 - alpha) * _kl(P_STUDENT, mix) + alpha * _kl(P_TEACHER, mix)
    loss = generalized_jsd_loss(student_logprobs=student, teacher_logprobs=teacher, alpha=alpha)
    assert loss.shape == (1, 1)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_alpha_zero_is_forward_kl_teacher_to_student() -> None:
    student, teacher = _pair()
    loss = generalized_jsd_loss(student_logprobs=student, teacher_logprobs=teacher, alpha=0.0)
    expected = _kl(P_TEACHER, P_STUDENT)
    assert expected > 0.3
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_alpha_one_is_reverse_kl_student_to_teacher() -> None:
    student, teacher = _pair()
    loss = generalized_jsd_loss(student_logprobs=student, teacher_logprobs=teacher, alpha=1.0)
    expected = _kl(P_STUDENT, P_TEACHER)
    assert expected > 0.3 and expected != pytest.approx(_kl(P_TEACHER, P_STUDENT))
    assert loss.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_identical_teacher_and_student_give_zero_loss_and_gradient(alpha: float) -> None:
    logits = _random_logits(4).requires_grad_()
    support, tail = student_support_logprobs(logits, _student_top_k(logits.detach(), 4))
    student = with_tail(support, tail)
    loss = generalized_jsd_loss(student_logprobs=student, teacher_logprobs=student.detach().clone(), alpha=alpha)
    assert torch.all(loss == 0.0)
    loss.sum().backward()
    if alpha == 0.5:
        assert torch.all(logits.grad == 0.0)
    else:
        # The plain KLs vanish only through the softmax normalisation: zero up to rounding.
        assert logits.grad.abs().max().item() < 1e-15


def test_teacher_receives_no_gradient() -> None:
    student, _ = _pair()
    teacher = torch.tensor(np.log(P_TEACHER), dtype=F64).view(1, 1, 4).requires_grad_()
    for alpha in (0.0, 0.5, 1.0):
        generalized_jsd_loss(student_logprobs=student, teacher_logprobs=teacher, alpha=alpha).sum().backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_jsd_gradcheck(alpha: float) -> None:
    student = _random_logits(5, (2, 3, 5)).log_softmax(-1).requires_grad_()
    teacher = _random_logits(6, (2, 3, 5)).log_softmax(-1)
    assert torch.autograd.gradcheck(
        lambda s: generalized_jsd_loss(student_logprobs=s, teacher_logprobs=teacher, alpha=alpha),
        (student,),
    )


def test_jsd_stays_finite_for_a_teacher_with_an_empty_tail() -> None:
    student, _ = _pair()
    teacher = torch.tensor([[[math.log(0.5), math.log(0.3), math.log(0.2), -math.inf]]], dtype=F64)
    for alpha in (0.0, 0.5, 1.0):
        loss = generalized_jsd_loss(student_logprobs=student, teacher_logprobs=teacher, alpha=alpha)
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(student.grad).all()


# --- token_policy_loss ---------------------------------------------------------------------


def test_token_advantages_are_centred_per_sequence_over_the_mask() -> None:
    student = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -9.0]], dtype=F64, requires_grad=True)
    teacher = torch.tensor([[0.0, 0.0, 0.0], [-0.1, -0.1, 5.0]], dtype=F64)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    # Ratio 1 everywhere, so loss_t = -A_t exactly and nothing is clipped.
    loss, clipped = token_policy_loss(
        student_logprobs=student,
        sampled_logprobs=student.detach(),
        teacher_logprobs=teacher,
        mask=mask,
        clip_epsilon=0.2,
    )
    # Raw A = [1, 2, 0.5] (mean 7/6) and [0.2, 0.6] (mean 0.4); the masked 14.0 is ignored.
    expected = -torch.tensor([[1 - 7 / 6, 2 - 7 / 6, 0.5 - 7 / 6], [-0.2, 0.2, 0.0]], dtype=F64)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)
    assert torch.all(loss.sum(-1).abs() < 1e-12)
    assert torch.all(clipped == 0)


def test_token_loss_clips_ratios_outside_the_trust_region() -> None:
    student = torch.full((1, 4), -1.0, dtype=F64, requires_grad=True)
    ratios = torch.tensor([[1.5, 0.5, 1.5, 1.1]], dtype=F64)
    sampled = student.detach() - ratios.log()
    advantages = torch.tensor([[1.0, -1.0, -2.0, 2.0]], dtype=F64)  # mean 0: centring keeps them
    loss, clipped = token_policy_loss(
        student_logprobs=student,
        sampled_logprobs=sampled,
        teacher_logprobs=student.detach() + advantages,
        mask=torch.ones(1, 4, dtype=torch.bool),
        clip_epsilon=0.2,
    )
    # -min(r A, clip(r) A): 1.5 with A>0 -> clipped at 1.2; 0.5 with A<0 -> clipped at 0.8;
    # 1.5 with A<0 keeps r A (pessimistic); 1.1 is inside [0.8, 1.2].
    torch.testing.assert_close(loss, torch.tensor([[-1.2, 0.8, 3.0, -2.2]], dtype=F64))
    assert clipped.tolist() == [[1.0, 1.0, 0.0, 0.0]]
    loss.sum().backward()
    # d(-r A)/d log pi = -r A where unclipped, 0 where the clipped constant is active.
    torch.testing.assert_close(student.grad, torch.tensor([[0.0, 0.0, 3.0, -2.2]], dtype=F64))


# --- masking and reduction -----------------------------------------------------------------


def test_masked_sequence_mean_is_per_sequence_then_per_batch() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0], [10.0, 99.0, 99.0], [7.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    # (mean(1, 2, 3) + 10) / 2; the empty third row does not count; a token mean would be 4.
    assert masked_sequence_mean(values, mask).item() == pytest.approx(6.0)


def test_all_masked_batch_gives_zero_on_the_graph() -> None:
    values = torch.randn(2, 3, requires_grad=True)
    result = masked_sequence_mean(values, torch.zeros(2, 3, dtype=torch.bool))
    assert result.item() == 0.0 and result.requires_grad
    result.backward()
    assert torch.all(values.grad == 0)


def _batch(seed: int, mask: torch.Tensor, **extra: torch.Tensor) -> tuple[SdpoBatch, torch.Tensor]:
    b, t = mask.shape
    logits = _random_logits(seed, (b, t, 8)).requires_grad_()
    teacher_logits = _random_logits(seed + 100, (b, t, 8))
    ids = teacher_logits.topk(3, dim=-1).indices
    support, tail = student_support_logprobs(logits, ids)
    teacher_lp = teacher_logits.log_softmax(-1)
    teacher_support = with_tail(teacher_lp.gather(-1, ids), torch.zeros(b, t, dtype=F64))
    teacher_support[..., -1] = (1 - teacher_support[..., :-1].exp().sum(-1)).log()
    sampled = torch.zeros(b, t, 1, dtype=torch.long)
    student_tokens = logits.log_softmax(-1).gather(-1, sampled).squeeze(-1)
    batch = SdpoBatch(
        student_support=with_tail(support, tail),
        teacher_support=teacher_support,
        student_tokens=student_tokens,
        sampled_logprobs=student_tokens.detach() - 0.1,
        teacher_tokens=teacher_lp.gather(-1, sampled).squeeze(-1),
        mask=mask,
        **extra,
    )
    return batch, logits


@pytest.mark.parametrize("loss_kind", ["jsd", "token"])
def test_masked_positions_contribute_nothing(loss_kind: str) -> None:
    mask = torch.tensor([[True, True, False], [True, False, False]])
    config = SdpoConfig(loss=loss_kind, alpha=0.5, kl_coef=0.1)
    batch, logits = _batch(7, mask, base_tokens=torch.full((2, 3), -2.0, dtype=F64))
    loss, _ = sdpo_loss(batch, config)
    (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
    assert torch.all(grad[~mask] == 0) and grad[mask].abs().sum() > 0
    # Finite garbage at padded positions changes neither the loss nor the gradient.
    noisy = dataclasses.replace(
        batch,
        teacher_support=torch.where(mask[..., None], batch.teacher_support, 1e3),
        sampled_logprobs=torch.where(mask, batch.sampled_logprobs, -1e4),
        teacher_tokens=torch.where(mask, batch.teacher_tokens, 50.0),
        base_tokens=torch.where(mask, batch.base_tokens, 1e4),
    )
    noisy_loss, _ = sdpo_loss(noisy, config)
    (noisy_grad,) = torch.autograd.grad(noisy_loss, logits)
    assert noisy_loss.item() == loss.item()
    torch.testing.assert_close(noisy_grad, grad, rtol=0, atol=0)


@pytest.mark.parametrize("loss_kind", ["jsd", "token"])
def test_fully_masked_row_keeps_loss_and_gradients_finite(loss_kind: str) -> None:
    config = SdpoConfig(loss=loss_kind, kl_coef=0.1)
    mask = torch.tensor([[True, True, True], [False, False, False]])
    batch, logits = _batch(8, mask, base_tokens=torch.full((2, 3), -2.0, dtype=F64))
    loss, metrics = sdpo_loss(batch, config)
    (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert torch.all(grad[1] == 0)
    rows = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    first_row = SdpoBatch(**{name: t[:1] for name, t in rows.items() if t is not None})
    alone, _ = sdpo_loss(first_row, config)
    assert loss.item() == pytest.approx(alone.item(), rel=1e-12)
    assert metrics.tokens == 3.0


@pytest.mark.parametrize("loss_kind", ["jsd", "token"])
def test_all_masked_batch_loss_is_zero_on_the_graph(loss_kind: str) -> None:
    batch, logits = _batch(9, torch.zeros(2, 3, dtype=torch.bool))
    loss, metrics = sdpo_loss(batch, SdpoConfig(loss=loss_kind))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(logits.grad == 0)
    assert metrics.tokens == 0.0


# --- importance weights and KL -------------------------------------------------------------


def test_importance_weights_are_truncated_at_c_and_detached() -> None:
    student = torch.zeros(1, 3, dtype=F64, requires_grad=True)
    sampled = -torch.tensor([[math.log(3.0), math.log(0.5), 0.0]], dtype=F64)
    rho = importance_weights(student_logprobs=student, sampled_logprobs=sampled, is_clip=2.0)
    torch.testing.assert_close(rho, torch.tensor([[2.0, 0.5, 1.0]], dtype=F64))
    assert not rho.requires_grad


def test_k3_matches_the_hand_value_and_its_gradient() -> None:
    student = torch.tensor([[math.log(0.2)]], dtype=F64, requires_grad=True)
    k3 = k3_kl(student_logprobs=student, base_logprobs=torch.tensor([[math.log(0.5)]], dtype=F64))
    # r = 0.5 / 0.2 = 2.5: k3 = r - 1 - log r; d k3 / d log pi_theta = 1 - r.
    assert k3.item() == pytest.approx(1.5 - math.log(2.5), rel=1e-12)
    k3.sum().backward()
    assert student.grad.item() == pytest.approx(-1.5, rel=1e-12)


def test_k3_is_nonnegative_and_zero_for_equal_models() -> None:
    student = _random_logits(10, (4, 5))
    base = _random_logits(11, (4, 5))
    assert torch.all(k3_kl(student_logprobs=student, base_logprobs=base) >= 0)
    assert torch.all(k3_kl(student_logprobs=student, base_logprobs=student) == 0)


# --- contrastive baseline ------------------------------------------------------------------


def test_contrastive_target_applies_the_feedback_shift_to_the_student() -> None:
    student = _log([0.5, 0.3, 0.2]).view(1, 1, 3)
    neutral = _log([0.2, 0.4, 0.4]).view(1, 1, 3)
    teacher = _log([0.4, 0.4, 0.2]).view(1, 1, 3)  # shift: x2, x1, x0.5
    target = contrastive_teacher_logprobs(teacher=teacher, neutral=neutral, anchor=student)
    unnormalised = np.array([0.5 * 2, 0.3 * 1, 0.2 * 0.5])
    np.testing.assert_allclose(target.exp().view(-1).numpy(), unnormalised / unnormalised.sum())


def test_a_shift_shared_by_every_bucket_cancels() -> None:
    student = _log([0.5, 0.3, 0.2]).view(1, 1, 3)
    neutral = _log([0.2, 0.4, 0.4]).view(1, 1, 3)
    target = contrastive_teacher_logprobs(teacher=neutral - 0.14, neutral=neutral, anchor=student)
    torch.testing.assert_close(target, student, rtol=0, atol=1e-12)


@pytest.mark.parametrize("loss_kind", ["jsd", "token"])
def test_feedback_no_better_than_neutral_gives_no_update(loss_kind: str) -> None:
    mask = torch.ones(2, 3, dtype=torch.bool)
    plain, logits = _batch(12, mask)
    config = SdpoConfig(loss=loss_kind, contrastive=True)
    gated = dataclasses.replace(
        plain,
        neutral_support=plain.teacher_support,
        neutral_tokens=plain.teacher_tokens,
        anchor_support=plain.student_support.detach(),
        anchor_tokens=plain.student_tokens.detach(),
    )
    loss, _ = sdpo_loss(gated, config)
    (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
    plain_loss, _ = sdpo_loss(plain, config.with_overrides(contrastive=False))
    (plain_grad,) = torch.autograd.grad(plain_loss, logits)
    assert plain_grad.abs().max().item() > 1e-3
    assert abs(loss.item()) < 1e-12
    assert grad.abs().max().item() < 1e-12


def test_contrastive_target_is_anchored_not_the_live_student() -> None:
    """Several steps on one batch converge: the target does not follow the student as it moves."""
    mask = torch.ones(2, 3, dtype=torch.bool)
    anchor, _ = _batch(14, mask)
    moved, _ = _batch(15, mask)
    shifted = dict(neutral_support=anchor.teacher_support - 0.3, neutral_tokens=anchor.teacher_tokens - 0.3)
    anchors = dict(anchor_support=anchor.student_support.detach(), anchor_tokens=anchor.student_tokens.detach())
    config = SdpoConfig(contrastive=True)
    at_start, _ = sdpo_loss(dataclasses.replace(anchor, **shifted, **anchors), config)
    teachers = dict(teacher_support=anchor.teacher_support, teacher_tokens=anchor.teacher_tokens)
    later, _ = sdpo_loss(dataclasses.replace(moved, **teachers, **shifted, **anchors), config)
    target = contrastive_teacher_logprobs(
        teacher=anchor.teacher_support, neutral=shifted["neutral_support"], anchor=anchor.student_support
    )
    # The target equals the anchor moved by the (uniform) shift, i.e. the anchor itself: loss 0 at the start,
    # and a moved student is pulled back towards it rather than given a new target.
    torch.testing.assert_close(target, anchor.student_support.detach(), rtol=0, atol=1e-6)
    assert abs(at_start.item()) < 1e-6
    assert later.item() > 1e-3


def test_contrastive_without_anchor_logprobs_is_a_config_error() -> None:
    batch, _ = _batch(13, torch.ones(1, 2, dtype=torch.bool))
    batch = dataclasses.replace(batch, neutral_support=batch.teacher_support, neutral_tokens=batch.teacher_tokens)
    with pytest.raises(ConfigError, match="the base policy's log-probs") as caught:
        sdpo_loss(batch, SdpoConfig(contrastive=True))
    assert caught.value.param == "contrastive"


def test_contrastive_without_neutral_logprobs_is_a_config_error() -> None:
    batch, _ = _batch(13, torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ConfigError, match="contrastive=True needs the neutral teacher") as caught:
        sdpo_loss(batch, SdpoConfig(contrastive=True))
    assert caught.value.param == "contrastive"


# --- sdpo_loss -----------------------------------------------------------------------------


def test_sdpo_jsd_loss_and_metrics_match_hand_values() -> None:
    student, teacher = _pair()
    student_tokens = torch.tensor([[math.log(0.5)]], dtype=F64)
    batch = SdpoBatch(
        student_support=student,
        teacher_support=teacher,
        student_tokens=student_tokens,
        sampled_logprobs=torch.tensor([[math.log(0.2)]], dtype=F64),  # ratio 2.5 -> rho = c = 2
        teacher_tokens=torch.tensor([[math.log(0.1)]], dtype=F64),
        mask=torch.ones(1, 1, dtype=torch.bool),
        base_tokens=torch.tensor([[math.log(0.25)]], dtype=F64),
    )
    loss, metrics = sdpo_loss(batch, SdpoConfig(alpha=0.0, is_clip=2.0, kl_coef=0.5))
    distill = 2.0 * _kl(P_TEACHER, P_STUDENT)
    kl = 0.5 - 1 - math.log(0.5)  # r = 0.25 / 0.5
    assert loss.item() == pytest.approx(distill + 0.5 * kl, rel=1e-12)
    assert metrics.as_dict() == pytest.approx(
        {
            "sdpo/loss": distill + 0.5 * kl,
            "sdpo/distill_loss": distill,
            "sdpo/kl": kl,
            "sdpo/is_ratio": 2.0,
            "sdpo/clip_fraction": 1.0,
            "sdpo/tokens": 1.0,
            "sdpo/teacher_student_gap": math.log(0.1) - math.log(0.5),
        },
        rel=1e-12,
    )


def test_an_unknown_loss_kind_is_a_config_error() -> None:
    batch, _ = _batch(15, torch.ones(1, 2, dtype=torch.bool))
    config = SdpoConfig()
    object.__setattr__(config, "loss", "mse")  # past SdpoConfig's own check, as a future kind would be
    with pytest.raises(ConfigError, match="loss must be 'jsd' or 'token', got 'mse'") as caught:
        sdpo_loss(batch, config)
    assert caught.value.param == "loss"


def test_kl_penalty_without_base_logprobs_is_a_config_error() -> None:
    batch, _ = _batch(14, torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ConfigError, match=r"kl_coef=0\.1 needs the base model") as caught:
        sdpo_loss(batch, SdpoConfig(kl_coef=0.1))
    assert caught.value.param == "kl_coef"
