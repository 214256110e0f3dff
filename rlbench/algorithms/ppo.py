"""PPO as in InstructGPT step 3 (Ouyang et al. 2022, https://arxiv.org/abs/2203.02155;
Schulman et al. 2017, https://arxiv.org/abs/1707.06347; the "N implementation details of RLHF
with PPO", https://arxiv.org/abs/2403.17031).

Per completion token t the reward is the KL penalty to the frozen reference, and at the last
token the sequence's score is added:

    r_t = -kl_coef * (log pi_old(o_t) - log pi_ref(o_t))  +  [t = last] * score

A value model estimates V(s_t); GAE(gamma, lam) over completion tokens only turns rewards and
values into advantages (no bootstrapping past the last token), which are whitened over the
batch. Then `ppo_epochs` passes over `num_minibatches` minimise the clipped policy loss and the
clipped value loss 0.5 * max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2), times vf_coef.

Roles: policy (trained), value (trained), reference (frozen), reward model (frozen; absent when
the reward is `rules`). One completion per prompt by default, so at equal completions PPO sees
G times more prompts than GRPO. Policy and value are separate models with separate optimizers,
so the policy's and the value's updates are independent and run as two phases.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from rlbench.algorithms.advantages import gae, whiten
from rlbench.algorithms.base import Batch, CompletionSource, UpdateSchedule, ValueInit
from rlbench.algorithms.losses import (
    clipped_policy_loss,
    clipped_value_loss,
    kl_k1,
    policy_loss_stats,
)
from rlbench.algorithms.params import PPOParams
from rlbench.config import RewardSource


def token_rewards(score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
                  mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """[N, T] per-token rewards: -kl_coef * k1 KL at every token, plus the score at the last one."""
    rewards = torch.zeros_like(logprobs)
    if ref_logprobs is not None and kl_coef > 0:
        rewards = -kl_coef * kl_k1(logprobs, ref_logprobs) * mask
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    return rewards.scatter_add(1, last[:, None], score[:, None].to(rewards.dtype))


class PPO:
    """PPO (InstructGPT step 3): value model + GAE, KL to the reference in the reward."""

    name: ClassVar[str] = "ppo"
    Params: ClassVar[type] = PPOParams
    default_reward: ClassVar[RewardSource] = "model"
    completion_source: ClassVar[CompletionSource] = "sampled"

    def __init__(self, params: PPOParams, reward_source: RewardSource | None = None) -> None:
        self.params = params
        self.reward_source: RewardSource = reward_source or self.default_reward

    def value_init(self) -> ValueInit:
        """Where the value model starts: "reward" or "policy"."""
        if self.params.value_init == "auto":
            return "reward" if self.reward_source in ("model", "both") else "policy"
        return self.params.value_init

    def roles(self) -> tuple[str, ...]:
        roles = ["policy", "value"]
        if self.params.kl_coef > 0:
            roles.append("reference")
        if self.reward_source in ("model", "both"):
            roles.append("reward")
        return tuple(roles)

    def schedule(self) -> UpdateSchedule:
        p = self.params
        return UpdateSchedule(lr=p.lr, weight_decay=p.weight_decay, max_grad_norm=p.max_grad_norm,
                              passes=p.ppo_epochs, num_minibatches=p.num_minibatches, value_lr=p.value_lr,
                              loss_agg=p.agg)

    def compute_advantages(self, batch: Batch) -> None:
        p, mask = self.params, batch.mask
        rewards = token_rewards(batch.rewards, batch.old_logprobs, batch.ref_logprobs, mask, p.kl_coef)
        advantages, returns = gae(rewards, batch.values, mask, p.gamma, p.lam)
        batch.advantages = whiten(advantages, mask) if p.whiten_advantages else advantages
        batch.returns = returns
        batch.stats["ppo/token_reward_mean"] = float((rewards * mask).sum() / mask.sum().clamp_min(1))

    def policy_loss(self, logprobs: torch.Tensor, mb: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        p = self.params
        loss = clipped_policy_loss(logprobs, mb.old_logprobs, mb.advantages, mb.mask, p.clip_eps, p.agg)
        stats = policy_loss_stats(logprobs, mb.old_logprobs, mb.advantages, mb.mask, p.clip_eps)
        stats["loss/policy"] = loss.item()
        return loss, stats

    def value_loss(self, values: torch.Tensor, mb: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        loss = self.params.vf_coef * clipped_value_loss(values, mb.values, mb.returns, mb.mask, self.params.vf_clip)
        return loss, {"loss/value": loss.item()}
