"""GRPO and GRPO-Zero (Shao et al. 2024, https://arxiv.org/abs/2402.03300; DeepSeek-R1-Zero).

For each prompt, sample a group of G completions, score them, and use the group-relative reward
as every token's advantage (eq. 3 of the lecture):

    A_i = (r_i - mean(r_1..r_G)) / std(r_1..r_G)

then maximise the clipped surrogate minus beta times the k3 KL estimate to the frozen reference
(eqs. 1 and 2). No value model: the group mean is the baseline.

How GRPO-Zero differs from GRPO: only in where the reward comes from. GRPO-Zero scores completions
with rules (regex format checks and the exact answer match, `rlbench/rewards.py`) and holds no
reward model, so it keeps two models in memory (policy, reference) instead of three. `beta: 0`
drops the KL term and with it the reference model.

Simplifications, stated plainly: one reference model frozen at the SFT weights (no periodic
reference reset); `num_iterations` passes over each batch with the rollout's own log-probs as
the old policy (recomputed only when the engine holds a separate copy of the weights).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from rlbench.algorithms.advantages import group_advantages
from rlbench.algorithms.base import Batch, CompletionSource, UpdateSchedule
from rlbench.algorithms.losses import aggregate, clipped_policy_loss, kl_k3, policy_loss_stats
from rlbench.algorithms.params import GRPOParams
from rlbench.config import RewardSource


class GRPO:
    """GRPO: group-relative advantages, a neural reward model by default."""

    name: ClassVar[str] = "grpo"
    Params: ClassVar[type] = GRPOParams
    default_reward: ClassVar[RewardSource] = "model"
    completion_source: ClassVar[CompletionSource] = "sampled"

    def __init__(self, params: GRPOParams, reward_source: RewardSource | None = None) -> None:
        self.params = params
        self.reward_source: RewardSource = reward_source or self.default_reward

    def roles(self) -> tuple[str, ...]:
        roles = ["policy"]
        if self.params.beta > 0:
            roles.append("reference")
        if self.reward_source in ("model", "both"):
            roles.append("reward")
        return tuple(roles)

    def schedule(self) -> UpdateSchedule:
        p = self.params
        return UpdateSchedule(lr=p.lr, weight_decay=p.weight_decay, max_grad_norm=p.max_grad_norm,
                              passes=p.num_iterations, num_minibatches=p.num_minibatches, loss_agg=p.agg)

    def value_init(self) -> None:
        return None

    def compute_advantages(self, batch: Batch) -> None:
        batch.advantages = group_advantages(batch.rewards, batch.group_size, scale=self.params.scale)

    def policy_loss(self, logprobs: torch.Tensor, mb: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        p = self.params
        loss = clipped_policy_loss(logprobs, mb.old_logprobs, mb.advantages, mb.mask, p.clip_eps, p.agg)
        stats = policy_loss_stats(logprobs, mb.old_logprobs, mb.advantages, mb.mask, p.clip_eps)
        stats["loss/policy"] = loss.item()
        if p.beta > 0:
            kl = aggregate(kl_k3(logprobs, mb.ref_logprobs), mb.mask, p.agg)
            loss = loss + p.beta * kl
            stats["kl/k3"] = kl.item()
        return loss, stats

    def value_loss(self, values: torch.Tensor, mb: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        raise AssertionError("GRPO has no value model")


class GRPOZero(GRPO):
    """GRPO-Zero: GRPO with rule rewards only (regex format + exact answer), no reward model."""

    name: ClassVar[str] = "grpo_zero"
    default_reward: ClassVar[RewardSource] = "rules"
