"""Advantage estimators against values worked out by hand."""

import math

import pytest
import torch
from torch.testing import assert_close

from rlbench.algorithms.advantages import (
    SCALE_MODES,
    gae,
    group_advantages,
    whiten,
    zero_variance_fraction,
)
from tests.tolerances import reorder_atol


def test_group_scale_matches_eq3_with_bessel_std():
    # group 1: [1, 0, 0, 0], mean 0.25, squared deviations 0.5625 + 3 * 0.0625 = 0.75, / (4 - 1) -> std 0.5
    #   A = 0.75 / (0.5 + 1e-4) = 1.49970, -0.25 / 0.5001 = -0.49990
    # group 2: [2, 2, 2, 2], zero variance -> all 0 (no NaN)
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    expected = torch.tensor([0.75 / 0.5001] + [-0.25 / 0.5001] * 3 + [0.0] * 4)
    assert_close(group_advantages(rewards, group_size=4), expected)


def test_group_scale_eps_zero_gives_unit_std():
    # [1, 0]: mean 0.5, Bessel std sqrt(0.5) -> A = +-0.5 / 0.70711 = +-0.70711
    advantages = group_advantages(torch.tensor([1.0, 0.0]), group_size=2, eps=0.0)
    assert_close(advantages, torch.tensor([1 / math.sqrt(2), -1 / math.sqrt(2)]))


def test_batch_scale_divides_by_std_of_all_rewards():
    # [0, 0 | 0, 4]: group means 0, 2 -> centered [0, 0, -2, 2]
    # batch mean 1, squared deviations 1 + 1 + 1 + 9 = 12, / 3 = 4 -> std 2 -> A = [0, 0, -1, 1]
    rewards = torch.tensor([0.0, 0.0, 0.0, 4.0])
    assert_close(group_advantages(rewards, 2, scale="batch", eps=0.0), torch.tensor([0.0, 0.0, -1.0, 1.0]))
    # for contrast, group scale divides group 2 by its own std sqrt(8) = 2.8284 -> +-2 / 2.8285 = +-0.70708
    # (group 1 has std 0: 0 / (0 + 1e-4) = 0)
    assert_close(
        group_advantages(rewards, 2, scale="group"),
        torch.tensor([0.0, 0.0, -2.0, 2.0]) / (math.sqrt(8) + 1e-4),
    )


def test_batch_scale_with_the_default_eps():
    # [0, 0 | 0, 4] as above: std 2, plus eps 1e-4 -> +-2 / 2.0001 = +-0.99995
    rewards = torch.tensor([0.0, 0.0, 0.0, 4.0])
    assert_close(group_advantages(rewards, 2, scale="batch"), torch.tensor([0.0, 0.0, -2.0, 2.0]) / 2.0001)


def test_batch_scale_of_two_rewards_and_of_one():
    # one group [0, 4]: centered [-2, 2], Bessel std of the batch sqrt(8) = 2.8284 -> +-2 / 2.8285 = +-0.70708
    assert_close(group_advantages(torch.tensor([0.0, 4.0]), 2, scale="batch"),
                 torch.tensor([-2.0, 2.0]) / (math.sqrt(8) + 1e-4))
    # a single reward: its own group mean, std taken as 0 -> 0, not NaN
    assert_close(group_advantages(torch.tensor([5.0]), 1, scale="batch"), torch.zeros(1))


def test_none_scale_only_subtracts_group_mean():
    # Dr. GRPO: [0, 0 | 0, 4] -> [0, 0, -2, 2]
    rewards = torch.tensor([0.0, 0.0, 0.0, 4.0])
    assert_close(group_advantages(rewards, 2, scale="none"), torch.tensor([0.0, 0.0, -2.0, 2.0]))


@pytest.mark.parametrize("scale", SCALE_MODES)
def test_group_of_one_gives_zeros_not_nan(scale):
    # each reward is its own group mean -> 0; the std of one value is taken as 0, so 0 / eps = 0
    advantages = group_advantages(torch.tensor([3.0, -1.0, 7.0]), group_size=1, scale=scale)
    assert_close(advantages, torch.zeros(3))


def test_integer_rewards_are_accepted():
    # [1, 0] as integers -> same as floats: +-0.5 / (0.70711 + 1e-4)
    advantages = group_advantages(torch.tensor([1, 0]), group_size=2)
    assert advantages.dtype == torch.float32
    assert_close(advantages, torch.tensor([0.5, -0.5]) / (math.sqrt(0.5) + 1e-4))


def test_unknown_scale_names_valid_ones():
    with pytest.raises(ValueError, match="group, batch, none"):
        group_advantages(torch.zeros(4), 2, scale="std")


def test_length_not_divisible_by_group_size_fails():
    with pytest.raises(AssertionError, match="divisible"):
        group_advantages(torch.zeros(5), 2)


# GAE: one sequence, T = 3, rewards [0, 0, 1], values [0.5, 0.6, 0.7]; V after the last token is 0.
# deltas (gamma 1): d0 = 0 + 0.6 - 0.5 = 0.1, d1 = 0 + 0.7 - 0.6 = 0.1, d2 = 1 + 0 - 0.7 = 0.3
REWARDS = torch.tensor([[0.0, 0.0, 1.0]])
VALUES = torch.tensor([[0.5, 0.6, 0.7]])
FULL_MASK = torch.ones(1, 3)


def test_gae_gamma_lambda_one_is_monte_carlo_return_minus_value():
    # A2 = 0.3, A1 = 0.1 + 0.3 = 0.4, A0 = 0.1 + 0.4 = 0.5; return 1 everywhere
    advantages, returns = gae(REWARDS, VALUES, FULL_MASK, gamma=1.0, lam=1.0)
    assert_close(advantages, torch.tensor([[0.5, 0.4, 0.3]]))
    assert_close(returns, torch.tensor([[1.0, 1.0, 1.0]]))


def test_gae_lambda_zero_is_one_step_td_error():
    # A = deltas = [0.1, 0.1, 0.3]; returns = A + V = [0.6, 0.7, 1.0]
    advantages, returns = gae(REWARDS, VALUES, FULL_MASK, gamma=1.0, lam=0.0)
    assert_close(advantages, torch.tensor([[0.1, 0.1, 0.3]]))
    assert_close(returns, torch.tensor([[0.6, 0.7, 1.0]]))


def test_gae_gamma_zero_is_reward_minus_value():
    # d = r - V = [-0.5, -0.6, 0.3], nothing carried back; returns = r
    advantages, returns = gae(REWARDS, VALUES, FULL_MASK, gamma=0.0, lam=1.0)
    assert_close(advantages, torch.tensor([[-0.5, -0.6, 0.3]]))
    assert_close(returns, torch.tensor([[0.0, 0.0, 1.0]]))


def test_gae_gamma_lambda_half():
    # d0 = 0 + 0.5 * 0.6 - 0.5 = -0.2, d1 = 0 + 0.5 * 0.7 - 0.6 = -0.25, d2 = 1 - 0.7 = 0.3
    # A2 = 0.3, A1 = -0.25 + 0.25 * 0.3 = -0.175, A0 = -0.2 + 0.25 * -0.175 = -0.24375
    advantages, returns = gae(REWARDS, VALUES, FULL_MASK, gamma=0.5, lam=0.5)
    assert_close(advantages, torch.tensor([[-0.24375, -0.175, 0.3]]))
    assert_close(returns, torch.tensor([[0.25625, 0.425, 1.0]]))


def test_gae_sequence_ending_before_t_does_not_bootstrap_past_its_end():
    # row 2 ends after 2 tokens; its padding holds garbage (reward 5, value 9) that must not leak in.
    # row 2, gamma = lam = 1: d1 = 1 + 0 - 0.6 = 0.4 (not 1 + 9 - 0.6), d0 = 0 + 0.6 - 0.5 = 0.1
    #   A = [0.5, 0.4, 0], returns = [1, 1, 0]; row 1 as in the Monte Carlo test above
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.5, 0.6, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert_close(advantages, torch.tensor([[0.5, 0.4, 0.3], [0.5, 0.4, 0.0]]))
    assert_close(returns, torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]))


def test_gae_of_one_token_completions():
    # T = 1: A = r - V = 2 - 0.5 = 1.5 and 1 - 0 = 1; returns = r
    advantages, returns = gae(torch.tensor([[2.0], [1.0]]), torch.tensor([[0.5], [0.0]]), torch.ones(2, 1), 1.0, 0.95)
    assert_close(advantages, torch.tensor([[1.5], [1.0]]))
    assert_close(returns, torch.tensor([[2.0], [1.0]]))


def test_gae_rejects_a_mask_that_is_not_right_padded():
    with pytest.raises(AssertionError, match="right-padded"):
        gae(REWARDS, VALUES, torch.tensor([[1, 0, 1]]), gamma=1.0, lam=1.0)


def test_whiten_uses_masked_positions_only():
    # masked-in [1, 2, 3]: mean 2, population variance (1 + 0 + 1) / 3 = 2/3, std 0.8165
    # -> [-1.2247, 0, 1.2247]; the padded 100 is ignored and comes out 0
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    s = math.sqrt(1.5)  # 1 / std = 1.2247
    assert_close(whiten(x, mask, eps=0.0), torch.tensor([[-s, 0.0, s, 0.0]]))
    # shift_mean=False keeps the mean 2: [0.7753, 2, 3.2247, 0]
    assert_close(whiten(x, mask, shift_mean=False, eps=0.0), torch.tensor([[2 - s, 2.0, 2 + s, 0.0]]))


def test_whiten_eps_damps_a_batch_that_barely_varies():
    # [0, 2e-4]: mean 1e-4, population variance 1e-8, as large as the default eps 1e-8:
    # +-1e-4 / sqrt(1e-8 + 1e-8) = +-0.70711 (not +-1)
    whitened = whiten(torch.tensor([[0.0, 2e-4]]), torch.ones(1, 2))
    assert_close(whitened, torch.tensor([[-1.0, 1.0]]) / math.sqrt(2), atol=1e-4, rtol=0)  # float32 of 1e-4 steps


def test_whiten_gives_zero_mean_unit_variance_over_mask():
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0)) * 5 + 3
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4, [1] * 5 + [0]])
    whitened = whiten(x, mask)
    kept = whitened[mask.bool()]
    # float32 sums in a kernel's order (tests/tolerances.py): n = 17 terms each, of magnitude up to
    # s = max |x| / std(x) in the whitened unit. The mean: the mean subtracted, then the mean taken
    # here (k = 2n); the variance: those and the variance divided by (k = 3n), terms up to s^2.
    n, s = len(kept), float(x[mask.bool()].abs().max() / x[mask.bool()].std(unbiased=False))
    assert_close(kept.mean(), torch.tensor(0.0), atol=reorder_atol(2 * n, s), rtol=0)
    assert_close(kept.var(unbiased=False), torch.tensor(1.0), atol=reorder_atol(3 * n, s * s), rtol=0)
    assert (whitened[~mask.bool()] == 0).all()


def test_zero_variance_fraction():
    # groups [1, 1], [0, 1], [2, 2], [0, 0]: three of four have equal rewards -> 0.75
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 2.0, 2.0, 0.0, 0.0])
    assert zero_variance_fraction(rewards, group_size=2) == 0.75
    assert zero_variance_fraction(torch.tensor([0.0, 1.0, 1.0, 0.0]), group_size=2) == 0.0
