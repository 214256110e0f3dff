"""sft_more: the control arm. The same budget spent on more supervised fine-tuning from the same SFT start.

An RL recipe's gain is only worth its compute if it beats what the same compute buys without RL.
This recipe continues the cold start's supervised training (`rlbench/stages/sft.py`): each step
takes `rollout.completions_per_step` training problems with their gold demonstrations (the task's
solutions, not sampled) and minimises next-token cross-entropy on the demonstration tokens, the
prompt being context. It holds only the policy, runs through the shared loop (memory per phase,
throughput, held-out accuracy before and after) and its trained FLOPs (6N + 12LdT per token of
each batch, per pass) count against `budget.flops` like an RL run's.

Which demonstrations: with a fixed demonstration set (`model.sft.demonstrations: N`) sft_more
trains on the same N the SFT stage used, epoch after epoch in the run's seeded order: the fair
control, which spends the RL budget without new labelled data. `sft_new_data` (SFTNewData) trains
on train problems that are not among the N: what more labelled data would buy, reported apart
and never the RL baseline. Without a fixed set both draw from the RL training split in the run's
order, as the SFT stage's fresh demonstrations are drawn.

Differences from the SFT stage, stated plainly: a constant learning rate (default: where the
stage's cosine schedule ended) and AdamW's default betas.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from rlbench.algorithms.base import Batch, CompletionSource, UpdateSchedule
from rlbench.algorithms.losses import masked_mean
from rlbench.algorithms.params import SFTMoreParams
from rlbench.config import RewardSource


class SFTMore:
    """Supervised fine-tuning on gold demonstrations, with the RL runs' budget."""

    name: ClassVar[str] = "sft_more"
    Params: ClassVar[type] = SFTMoreParams
    default_reward: ClassVar[RewardSource] = "rules"  # logged on the demonstrations only; never optimised
    completion_source: ClassVar[CompletionSource] = "gold"
    fresh_demonstrations: ClassVar[bool] = False  # True: not the SFT stage's demonstrations (Run._training_problems)

    def __init__(self, params: SFTMoreParams, reward_source: RewardSource | None = None) -> None:
        self.params = params
        self.reward_source: RewardSource = reward_source or self.default_reward

    def roles(self) -> tuple[str, ...]:
        return ("policy",)

    def schedule(self) -> UpdateSchedule:
        p = self.params
        return UpdateSchedule(lr=p.lr, weight_decay=p.weight_decay, max_grad_norm=p.max_grad_norm,
                              passes=p.passes, num_minibatches=p.num_minibatches)

    def value_init(self) -> None:
        return None

    def compute_advantages(self, batch: Batch) -> None:
        batch.advantages = torch.ones_like(batch.rewards)  # every demonstration token counts once

    def policy_loss(self, logprobs: torch.Tensor, mb: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy of the demonstration tokens: the mean negative log-prob over real tokens."""
        loss = -masked_mean(logprobs, mb.mask)
        return loss, {"loss/policy": loss.item(), "loss/sft": loss.item()}

    def value_loss(self, values: torch.Tensor, mb: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        raise AssertionError("sft_more has no value model")


class SFTNewData(SFTMore):
    """SFT on fresh demonstrations (train problems not among the SFT stage's fixed set), with the
    RL runs' budget: what more labelled data would buy."""

    name: ClassVar[str] = "sft_new_data"
    fresh_demonstrations: ClassVar[bool] = True
