"""GRPO and GRPO-Zero: roles, group size, and one real optimisation step on a toy group."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.testing import assert_close

from rlbench.algorithms.base import Batch
from rlbench.algorithms.grpo import GRPO, GRPOParams, GRPOZero
from rlbench.catalog import load_problems
from rlbench.config import TaskConfig
from rlbench.models.batching import left_pad
from rlbench.models.embedded import build_embedded
from rlbench.models.forward import completion_logprobs
from rlbench.models.optim import adamw
from rlbench.rewards import gold_correct
from rlbench.rollout import Rollout
from rlbench.tasks import demonstration, encode_prompts

# ---- roles and group size -------------------------------------------------------------------------


def test_grpo_roles():
    assert GRPO(GRPOParams()).roles() == ("policy", "reference", "reward")  # reward model by default
    assert GRPO(GRPOParams(), "rules").roles() == ("policy", "reference")
    assert GRPO(GRPOParams(), "both").roles() == ("policy", "reference", "reward")
    assert GRPOZero(GRPOParams()).roles() == ("policy", "reference")  # rules by default: no reward model
    assert GRPOZero(GRPOParams(beta=0.0)).roles() == ("policy",)  # beta 0: no KL term, no reference
    assert GRPO(GRPOParams(beta=0.0)).roles() == ("policy", "reward")


def test_group_size_defaults_to_the_rollout_setting():
    assert GRPOParams().completions_per_prompt(default=4) == 4
    assert GRPOParams().completions_per_prompt(default=8) == 8
    assert GRPOParams(group_size=16).completions_per_prompt(default=4) == 16


def test_grpo_has_no_value_loss():
    with pytest.raises(AssertionError, match="no value model"):
        GRPO(GRPOParams()).value_loss(torch.zeros(1, 1), None)


# ---- one step on a group of two -------------------------------------------------------------------


def toy_group(tokenizer) -> tuple[Rollout, list]:
    """One real prompt and two completions of it: the gold demonstration (right) and a garbled one (wrong)."""
    problem = load_problems(TaskConfig(), "train", 1, seed=0)[0]
    right = demonstration(problem)
    wrong = "<reasoning>\nno idea\n</reasoning>\n<answer>\n" + str(int(problem.answer) + 7) + "\n</answer>\n"
    completions = [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                   for text in (right, wrong)]
    prompt = encode_prompts(tokenizer, [problem])[0]
    prompt_ids, prompt_mask = left_pad([prompt, prompt], tokenizer.pad_token_id)
    width = max(len(c) for c in completions)
    completion_ids = torch.full((2, width), tokenizer.pad_token_id, dtype=torch.long)
    completion_mask = torch.zeros(2, width)
    for row, ids in enumerate(completions):
        completion_ids[row, :len(ids)] = torch.tensor(ids)
        completion_mask[row, :len(ids)] = 1.0
    rollout = Rollout(
        input_ids=torch.cat([prompt_ids, completion_ids], 1),
        attention_mask=torch.cat([prompt_mask, completion_mask.long()], 1),
        prompt_width=prompt_ids.shape[1], completion_ids=completion_ids, completion_mask=completion_mask,
        logprobs=torch.zeros(2, width), texts=[right, wrong], truncated=torch.zeros(2, dtype=torch.bool))
    return rollout, [problem, problem]


def sequence_logprobs(model: torch.nn.Module, rollout: Rollout) -> torch.Tensor:
    """[N, T] per-token log-probs of the completions (zero on padding)."""
    logprobs = completion_logprobs(model, rollout.input_ids, rollout.attention_mask, rollout.prompt_width,
                                   rollout.completion_ids)
    return logprobs * rollout.completion_mask


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_one_grpo_zero_step_moves_the_right_completion_up_and_the_wrong_one_down(beta):
    torch.manual_seed(0)
    policy, tokenizer = build_embedded(0)
    rollout, problems = toy_group(tokenizer)
    rewards = torch.tensor(gold_correct(rollout.texts, problems))
    assert rewards.tolist() == [1.0, 0.0]
    algorithm = GRPOZero(GRPOParams(beta=beta))  # the default lr, 1e-4
    with torch.no_grad():
        old = sequence_logprobs(policy, rollout)
    batch = Batch(rollout, problems, group_size=2, rewards=rewards, gold=rewards, old_logprobs=old)
    if beta > 0:
        reference = copy.deepcopy(policy).requires_grad_(False)
        with torch.no_grad():
            batch.ref_logprobs = sequence_logprobs(reference, rollout)
    algorithm.compute_advantages(batch)
    # rewards 1, 0: mean 0.5, std (Bessel) sqrt(0.5) = 0.7071 -> advantages +-0.5 / 0.7071 = +-0.7071
    assert_close(batch.advantages, torch.tensor([1.0, -1.0]) / math.sqrt(2), atol=1e-3, rtol=0)

    optimizer = adamw(policy.parameters(), lr=algorithm.params.lr)
    loss, stats = algorithm.policy_loss(sequence_logprobs(policy, rollout), batch)
    assert ("kl/k3" in stats) == (beta > 0)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()

    with torch.no_grad():
        new = sequence_logprobs(policy, rollout)
    change = new.sum(-1) - old.sum(-1)  # change of each completion's total log-probability
    assert change[0] > 0, change  # the positively advantaged completion became more likely
    assert change[1] < 0, change  # the negative one less likely
