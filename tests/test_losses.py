"""Loss functions against values worked out by hand."""

import math

import pytest
import torch
from torch.testing import assert_close

from rlbench.algorithms.losses import (
    AGG_MODES,
    aggregate,
    bradley_terry_loss,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    kl_k1,
    kl_k3,
    masked_mean,
    policy_loss_stats,
)

E_HALF = math.exp(0.5)  # 1.6487
E_MINUS_HALF = math.exp(-0.5)  # 0.6065


def test_kl_k3_is_zero_when_equal_and_positive_otherwise():
    log_half, log_quarter = math.log(0.5), math.log(0.25)
    logp = torch.tensor([log_half, log_half, log_quarter])
    ref_logp = torch.tensor([log_half, log_quarter, log_half])
    # equal -> 1 - 0 - 1 = 0
    # pi 0.5, ref 0.25: ratio ref/pi = 0.5 -> 0.5 - ln 0.5 - 1 = 0.5 + 0.69315 - 1 = 0.19315
    # pi 0.25, ref 0.5: ratio 2 -> 2 - ln 2 - 1 = 0.30685
    expected = torch.tensor([0.0, 0.5 + math.log(2) - 1, 1 - math.log(2)])
    assert_close(kl_k3(logp, ref_logp), expected)
    assert (kl_k3(logp, ref_logp)[1:] > 0).all()


def test_kl_k1_is_log_ratio_and_can_be_negative():
    # ln 0.5 - ln 0.25 = ln 2 = 0.69315; the other way round -0.69315
    logp = torch.tensor([math.log(0.5), math.log(0.25)])
    ref_logp = torch.tensor([math.log(0.25), math.log(0.5)])
    assert_close(kl_k1(logp, ref_logp), torch.tensor([math.log(2), -math.log(2)]))


def test_masked_mean_and_empty_mask():
    x = torch.tensor([[1.0, 2.0, 50.0], [4.0, 60.0, 70.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert_close(masked_mean(x, mask), torch.tensor(7.0 / 3))  # (1 + 2 + 4) / 3
    assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.5, 4.0]))
    assert_close(masked_mean(x, torch.zeros_like(mask)), torch.tensor(0.0))  # empty mask -> 0, not NaN


def one_token(log_ratio: float, advantage: float, clip_eps: float = 0.2) -> torch.Tensor:
    """Clipped policy loss of a single token with the given log(pi / pi_old)."""
    return clipped_policy_loss(
        torch.tensor([[log_ratio]]), torch.zeros(1, 1), torch.tensor([advantage]), torch.ones(1, 1), clip_eps
    )


def test_clip_active_on_both_sides():
    # A > 0, ratio e^0.5 = 1.6487 > 1.2: min(1.6487, 1.2) * 1 -> loss -1.2
    assert_close(one_token(0.5, 1.0), torch.tensor(-1.2))
    # A < 0, ratio e^-0.5 = 0.6065 < 0.8: min(-0.6065, -0.8) -> loss 0.8
    assert_close(one_token(-0.5, -1.0), torch.tensor(0.8))


def test_clip_inactive_where_the_unclipped_term_is_smaller():
    # A > 0, ratio 0.6065 < 0.8: min(0.6065, 0.8) -> loss -0.6065 (no floor on lowering a good token)
    assert_close(one_token(-0.5, 1.0), torch.tensor(-E_MINUS_HALF))
    # A < 0, ratio 1.6487 > 1.2: min(-1.6487, -1.2) -> loss 1.6487 (the pessimistic bound)
    assert_close(one_token(0.5, -1.0), torch.tensor(E_HALF))
    # ratio 1 -> loss -A
    assert_close(one_token(0.0, 2.0), torch.tensor(-2.0))


# N = 2 completions, T = 3; the second ends after one token. Ratio 1, so loss per token = -A:
# [[-1, -2, -3], [-4, pad, pad]]
AGG_ADVANTAGES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
AGG_MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


@pytest.mark.parametrize(
    ("agg", "expected"),
    [
        ("token_mean", -2.5),  # (-1 - 2 - 3 - 4) / 4 tokens
        ("seq_mean_token_mean", -3.0),  # mean(-6 / 3, -4 / 1) = mean(-2, -4)
        ("seq_mean_token_sum_norm", -10.0 / 6),  # -10 / (N * T) = -10 / (2 * 3)
    ],
)
def test_clipped_policy_loss_every_agg(agg, expected):
    logp = torch.zeros(2, 3)
    loss = clipped_policy_loss(logp, logp.clone(), AGG_ADVANTAGES, AGG_MASK, agg=agg)
    assert_close(loss, torch.tensor(expected))


def test_every_agg_mode_is_tested():
    assert set(AGG_MODES) == {"token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"}


def test_unknown_agg_names_valid_ones():
    with pytest.raises(ValueError, match="token_mean, seq_mean_token_mean, seq_mean_token_sum_norm"):
        aggregate(torch.zeros(1, 2), torch.ones(1, 2), "sum")


@pytest.mark.parametrize("agg", AGG_MODES)
def test_masked_padding_changes_neither_loss_nor_gradient(agg):
    generator = torch.Generator().manual_seed(0)
    old_logp = -torch.rand(2, 4, generator=generator)
    logp = (old_logp + 0.3 * torch.randn(2, 4, generator=generator)).requires_grad_()
    advantages = torch.tensor([1.0, -0.5])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    loss = clipped_policy_loss(logp, old_logp, advantages, mask, agg=agg)
    (grad,) = torch.autograd.grad(loss, logp)

    changed = logp.detach().clone()
    changed[~mask.bool()] += 3.0
    changed.requires_grad_()
    changed_loss = clipped_policy_loss(changed, old_logp, advantages, mask, agg=agg)
    (changed_grad,) = torch.autograd.grad(changed_loss, changed)

    assert_close(changed_loss, loss)
    assert_close(changed_grad, grad)
    assert (grad[~mask.bool()] == 0).all()
    assert (grad[mask.bool()] != 0).any()


def test_per_sequence_advantages_equal_broadcast_per_token_advantages():
    generator = torch.Generator().manual_seed(1)
    old_logp = -torch.rand(2, 3, generator=generator)
    logp = old_logp + 0.4 * torch.randn(2, 3, generator=generator)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    per_sequence = torch.tensor([0.7, -1.3])
    per_token = torch.tensor([[0.7] * 3, [-1.3] * 3])
    for agg in AGG_MODES:
        assert_close(
            clipped_policy_loss(logp, old_logp, per_sequence, mask, agg=agg),
            clipped_policy_loss(logp, old_logp, per_token, mask, agg=agg),
        )


# Four tokens, eps 0.2, token_mean (divide by 4):
#   log ratio 0.5,  A = +1: ratio 1.6487 clipped to 1.2   -> clipped term chosen, gradient 0
#   log ratio -0.5, A = -1: ratio 0.6065 clipped to 0.8   -> clipped term chosen, gradient 0
#   log ratio 0,    A = +1: loss -ratio,  d/dlogp = -ratio * A / 4 = -0.25
#   log ratio 0.5,  A = -1: loss +ratio,  d/dlogp = 1.6487 / 4 = 0.41218
GRAD_LOG_RATIO = torch.tensor([[0.5, -0.5, 0.0, 0.5]])
GRAD_ADVANTAGES = torch.tensor([[1.0, -1.0, 1.0, -1.0]])


def test_gradient_is_zero_where_the_surrogate_is_clipped():
    logp = GRAD_LOG_RATIO.clone().requires_grad_()
    loss = clipped_policy_loss(logp, torch.zeros(1, 4), GRAD_ADVANTAGES, torch.ones(1, 4))
    loss.backward()
    assert_close(logp.grad, torch.tensor([[0.0, 0.0, -0.25, E_HALF / 4]]))


def test_policy_loss_stats():
    # clipped: tokens 1 and 2 of 4 -> 0.5. The padded 5th token (ratio e^3, A = +1) would be clipped too.
    # approx_kl per token (e^x - 1 - x): 0.14872, 0.10653, 0, 0.14872 -> mean 0.40397 / 4 = 0.10099
    logp = torch.cat([GRAD_LOG_RATIO, torch.tensor([[3.0]])], dim=1).requires_grad_()
    advantages = torch.cat([GRAD_ADVANTAGES, torch.tensor([[1.0]])], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    stats = policy_loss_stats(logp, torch.zeros(1, 5), advantages, mask, clip_eps=0.2)
    assert isinstance(stats["clip_fraction"], float) and isinstance(stats["approx_kl"], float)
    assert stats["clip_fraction"] == pytest.approx(0.5)
    expected_kl = (2 * (E_HALF - 1 - 0.5) + (E_MINUS_HALF - 1 + 0.5)) / 4
    assert stats["approx_kl"] == pytest.approx(expected_kl, rel=1e-5)


def test_defaults_clip_at_0_2():
    # clip_eps defaults to 0.2 (PPO's paper value): ratio e^0.5 = 1.6487, A = +1 -> clipped to 1.2, loss -1.2;
    # the same token is counted as clipped by the stats' default
    logp, old, advantages, mask = torch.tensor([[0.5]]), torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1)
    assert_close(clipped_policy_loss(logp, old, advantages, mask), torch.tensor(-1.2))
    # ratio e^0.15 = 1.1618: inside 1 +- 0.2, so not clipped under the default (it would be under 0.1)
    assert policy_loss_stats(torch.tensor([[0.5, 0.15]]), torch.zeros(1, 2), advantages, torch.ones(1, 2)) \
        ["clip_fraction"] == 0.5


def test_clip_fraction_counts_only_tokens_whose_gradient_the_clip_stops():
    # eps 0.2; (log ratio, A): ratio e^0.5 = 1.65 or e^-0.5 = 0.61, both outside [0.8, 1.2]
    #   (0.5, 0)    A = 0: no gradient to stop, not counted       (-0.5, 0)    likewise
    #   (0.5, 0.5)  A > 0 and ratio > 1.2: clipped                 (-0.5, 0.5)  A > 0 at a low ratio: not clipped
    #   (-0.5, -0.5) A < 0 and ratio < 0.8: clipped                (0.5, -0.5)  A < 0 at a high ratio: not clipped
    # -> 2 of 6
    logp = torch.tensor([[0.5, -0.5, 0.5, -0.5, -0.5, 0.5]])
    advantages = torch.tensor([[0.0, 0.0, 0.5, 0.5, -0.5, -0.5]])
    stats = policy_loss_stats(logp, torch.zeros(1, 6), advantages, torch.ones(1, 6), clip_eps=0.2)
    assert stats["clip_fraction"] == pytest.approx(2 / 6)


def test_a_ratio_exactly_at_the_clip_boundary_is_not_clipped():
    # At ratio = 1 +- eps exactly the clipped and unclipped terms are equal and the gradient still flows:
    # not counted as clipped. eps is taken from the ratio this machine computes, so the tie is exact.
    logp = torch.tensor([[0.3, -0.3]])
    ratio = torch.exp(logp)
    upper, lower = float(ratio[0, 0]) - 1, 1 - float(ratio[0, 1])
    stats = policy_loss_stats(logp[:, :1], torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1), clip_eps=upper)
    assert stats["clip_fraction"] == 0.0  # A > 0 at ratio 1 + eps
    stats = policy_loss_stats(logp[:, 1:], torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1), clip_eps=lower)
    assert stats["clip_fraction"] == 0.0  # A < 0 at ratio 1 - eps


def test_clipped_value_loss_clip_active():
    # V 1.0, V_old 0.5, c 0.2 -> clipped V 0.7; R 2: max((1 - 2)^2, (0.7 - 2)^2) = max(1, 1.69) -> 0.5 * 1.69
    values = torch.tensor([[1.0]], requires_grad=True)
    loss = clipped_value_loss(
        values, torch.tensor([[0.5]]), torch.tensor([[2.0]]), torch.ones(1, 1), clip=0.2
    )
    assert_close(loss, torch.tensor(0.845))
    loss.backward()
    assert_close(values.grad, torch.tensor([[0.0]]))  # the clipped term gives no gradient


def test_clipped_value_loss_clip_active_but_unclipped_term_larger():
    # V 1.0, V_old 0.5 -> clipped 0.7; R 0: max(1, 0.49) = 1 -> 0.5
    loss = clipped_value_loss(
        torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[0.0]]), torch.ones(1, 1), clip=0.2
    )
    assert_close(loss, torch.tensor(0.5))


def test_clipped_value_loss_clip_inactive_and_padding_ignored():
    # token 1: V 0.6 within 0.5 +- 0.2, R 2 -> (0.6 - 2)^2 = 1.96; token 2: V = R -> 0; token 3 padded
    # 0.5 * (1.96 + 0) / 2 = 0.49
    values = torch.tensor([[0.6, 1.0, 40.0]])
    old_values = torch.tensor([[0.5, 1.0, 0.0]])
    returns = torch.tensor([[2.0, 1.0, -40.0]])
    mask = torch.tensor([[1, 1, 0]])
    assert_close(clipped_value_loss(values, old_values, returns, mask, clip=0.2), torch.tensor(0.49))


def test_bradley_terry_loss():
    # equal scores: -log sigmoid(0) = log 2 = 0.69315
    assert_close(bradley_terry_loss(torch.tensor([1.5]), torch.tensor([1.5])), torch.tensor(math.log(2)))
    # margin 2: log(1 + e^-2) = 0.12693; mean with log 2 -> 0.41004
    loss = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert_close(loss, torch.tensor((math.log1p(math.exp(-2)) + math.log(2)) / 2))
    # margin -200 stays finite: -log sigmoid(-200) = 200
    assert_close(bradley_terry_loss(torch.tensor([-100.0]), torch.tensor([100.0])), torch.tensor(200.0))


def test_entropy_from_logits():
    # uniform over 4 -> ln 4 = 1.38629; p = [0.5, 0.25, 0.25, ~0] -> 0.5 ln 2 + 0.5 ln 4 = 1.03972;
    # one logit far above the rest -> ~0
    logits = torch.tensor(
        [
            [[0.0, 0.0, 0.0, 0.0], [math.log(0.5), math.log(0.25), math.log(0.25), -1e4]],
            [[50.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]],
        ]
    )
    entropy = entropy_from_logits(logits)
    assert entropy.shape == (2, 2)
    expected = torch.tensor([[math.log(4), 1.5 * math.log(2)], [0.0, math.log(4)]])
    assert_close(entropy, expected, atol=1e-6, rtol=1e-5)
