"""The batch the loop hands an algorithm (rows, minibatch selection) and the update schedule's defaults."""

from __future__ import annotations

import torch

from rlbench.algorithms.base import Batch, UpdateSchedule, uses_reward_model
from rlbench.algorithms.grpo import GRPO
from rlbench.algorithms.params import GRPOParams, PPOParams
from rlbench.algorithms.ppo import PPO
from rlbench.rollout import Rollout


def batch_of(n: int, t: int) -> Batch:
    """n completions of t tokens whose every tensor row holds its row number, so selections can be read off."""
    rows = torch.arange(n, dtype=torch.float32)
    per_token = rows[:, None].expand(n, t).clone()
    rollout = Rollout(input_ids=per_token.long(), attention_mask=torch.ones(n, t, dtype=torch.long), prompt_width=0,
                      completion_ids=per_token.long(), completion_mask=torch.ones(n, t), logprobs=per_token,
                      texts=[f"text {i}" for i in range(n)], truncated=torch.zeros(n, dtype=torch.bool))
    return Batch(rollout, [f"problem {i}" for i in range(n)], 2, rewards=rows, gold=rows, old_logprobs=per_token,
                 values=per_token + 100)


def test_len_is_the_number_of_completions_not_tokens():
    assert len(batch_of(4, 3)) == 4
    assert len(batch_of(2, 5)) == 2


def test_select_takes_the_rows_and_keeps_what_is_missing_missing():
    batch = batch_of(4, 3)
    picked = batch.select(torch.tensor([3, 1]))
    assert picked.group_size == 1  # rows of different groups unless told otherwise
    assert picked.problems == ["problem 3", "problem 1"]
    assert picked.rewards.tolist() == [3.0, 1.0]
    assert picked.old_logprobs[:, 0].tolist() == [3.0, 1.0]
    assert picked.values[:, 0].tolist() == [103.0, 101.0]  # present: selected
    assert picked.ref_logprobs is None and picked.advantages is None  # absent: stays absent
    assert picked.rollout.texts == ["text 3", "text 1"]
    assert batch.select(torch.tensor([0, 1]), group_size=2).group_size == 2


def test_update_schedule_defaults_are_one_pass_one_minibatch():
    schedule = UpdateSchedule(lr=1e-4, weight_decay=0.0, max_grad_norm=1.0)
    assert (schedule.passes, schedule.num_minibatches, schedule.value_lr, schedule.loss_agg) == (1, 1, None, "token_mean")


def test_the_reward_model_stage_is_needed_for_a_reward_role_or_a_value_model_started_from_it():
    assert not uses_reward_model(GRPO(GRPOParams(), "rules"))  # rule rewards, no value model
    assert uses_reward_model(GRPO(GRPOParams(), "model"))  # a reward role; no value model
    assert uses_reward_model(PPO(PPOParams(value_init="reward"), "rules"))  # no reward role; the value model's start
    assert not uses_reward_model(PPO(PPOParams(value_init="policy"), "rules"))
