"""Advantage estimators: GRPO's group-relative advantages and PPO's GAE, as pure functions over tensors.

GRPO samples G completions per prompt and scores each completion against its own group
(eq. 3 of the lecture); PPO estimates a per-token advantage from a value model with GAE. Per-token
tensors are [B, T], right-padded, with `mask` 1 on completion tokens and 0 on padding after the end.
"""

import torch
from torch import Tensor

from rlbench.algorithms.losses import masked_mean
from rlbench.algorithms.params import SCALE_MODES


def group_advantages(rewards: Tensor, group_size: int, scale: str = "group", eps: float = 1e-4) -> Tensor:
    """Group-relative advantages, one per completion.

    - "group": (r - group mean) / (group std + eps), eq. 3 of DeepSeekMath (https://arxiv.org/abs/2402.03300).
    - "batch": (r - group mean) / (std of all rewards + eps), REINFORCE++ with a group baseline
      (https://arxiv.org/abs/2501.03262).
    - "none": r - group mean, no scaling (Dr. GRPO, https://arxiv.org/abs/2503.20783).
    Standard deviations use Bessel's correction (as torch.std); a group of one has std 0.

    Args:
        rewards: [B * G] rewards, the G completions of each prompt adjacent.
        group_size: G, completions per prompt.
        scale: one of SCALE_MODES.
        eps: added to the std so a group with equal rewards gets advantages 0, not NaN.

    Returns:
        [B * G] advantages.
    """
    assert rewards.dim() == 1 and rewards.numel() % group_size == 0, (
        f"rewards must be flat with a length divisible by group_size={group_size}, got shape {tuple(rewards.shape)}"
    )
    if scale not in SCALE_MODES:
        raise ValueError(f"unknown scale {scale!r}; valid values: {', '.join(SCALE_MODES)}")
    rewards = rewards.float() if not rewards.is_floating_point() else rewards
    grouped = rewards.view(-1, group_size)
    centered = (grouped - grouped.mean(dim=1, keepdim=True)).flatten()
    if scale == "group":
        std = grouped.std(dim=1) if group_size > 1 else torch.zeros_like(grouped[:, 0])
        return centered / (std.repeat_interleave(group_size) + eps)
    if scale == "batch":
        std = rewards.std() if rewards.numel() > 1 else torch.zeros_like(rewards[0])
        return centered / (std + eps)
    return centered


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation (https://arxiv.org/abs/1506.02438, eq. 16).

    delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = delta_t + gamma * lam * A_{t+1}.
    The value after a completion's last real token is 0: nothing is bootstrapped past its end.

    Args:
        rewards: [B, T] per-token rewards (for PPO: -kl_coef * KL, plus the score on the last token).
        values: [B, T] value estimates of each token's state (constants; pass them detached).
        mask: [B, T], 1 on completion tokens, 0 on the right padding.
        gamma: discount.
        lam: GAE lambda (0: one-step TD error, 1: Monte Carlo return minus V).

    Returns:
        (advantages, returns), both [B, T], returns = advantages + values, zero outside the mask.
    """
    mask = mask.to(values.dtype)
    assert bool((mask[:, 1:] <= mask[:, :-1]).all()), (
        "gae expects right-padded completions (mask 1...1 0...0)"
    )
    values, rewards = values * mask, rewards * mask
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    deltas = rewards + gamma * next_values - values
    advantages = torch.zeros_like(deltas)
    running = torch.zeros_like(deltas[:, 0])
    for t in reversed(range(deltas.shape[1])):
        running = deltas[:, t] + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise `x` to mean 0 and variance 1 over the masked positions ("advantage normalization").

    See "The 37 implementation details of PPO", item 7
    (https://iclr-blog-track.github.io/2022/03/25/ppo-implementation-details/). Uses the population
    variance over the mask.

    Args:
        x: [B, T] values to normalise.
        mask: [B, T], 1 on the positions that count.
        shift_mean: False keeps the original mean (only the spread is rescaled).
        eps: added to the variance.

    Returns:
        [B, T] whitened values, zero outside the mask.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


def zero_variance_fraction(rewards: Tensor, group_size: int) -> float:
    """Fraction of groups whose G rewards are all equal, so every advantage in them is 0 (no learning signal).

    Args:
        rewards: [B * G] rewards, the G completions of each prompt adjacent.
        group_size: G.

    Returns:
        A fraction in [0, 1].
    """
    assert rewards.dim() == 1 and rewards.numel() % group_size == 0, (
        f"rewards must be flat with a length divisible by group_size={group_size}, got shape {tuple(rewards.shape)}"
    )
    grouped = rewards.view(-1, group_size)
    all_equal = (grouped == grouped[:, :1]).all(dim=1)
    return all_equal.float().mean().item()
