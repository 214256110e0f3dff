"""GRPO and GRPO-Zero: roles, group size, the full loss (clipped surrogate + beta x k3 KL) by hand under
every `agg`, and one real optimisation step on a toy group."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.testing import assert_close

from rlbench.algorithms.base import Batch
from rlbench.algorithms.grpo import GRPO, GRPOParams, GRPOZero
from rlbench.algorithms.params import AGG_MODES
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


# ---- the full loss by hand, with a reference that differs from the policy ------------------------
#
# Two completions of T = 2 tokens; the second ends after one token (its pad holds garbage that the
# mask must hide). Advantages +1 and -1, clip_eps 0.2, beta 0.1. Per masked token:
#
#   token      logp - old   ratio            A    surrogate -min(ratio A, clip(ratio) A)   d/dlogp
#   (0, 0)     0.5          e^0.5 = 1.6487   +1   clipped to 1.2        -> -1.2             0 (clipped)
#   (0, 1)     0            1                +1   -1                                         -ratio A = -1
#   (1, 0)     0            1                -1   +1                                         -ratio A = +1
#
#   token      ref - logp   k3 = e^x - x - 1                 d k3 / d logp = 1 - e^x
#   (0, 0)     ln 2         2 - ln 2 - 1 = 1 - ln 2 = 0.30685   1 - 2 = -1
#   (0, 1)     0            0                                   0
#   (1, 0)     -ln 2        1/2 + ln 2 - 1 = 0.19315             1 - 1/2 = +0.5
#   (k3 sums to exactly 0.5 over the three tokens)
#
# Aggregation weights w per token: token_mean 1/3 each; seq_mean_token_mean 1/(2 x 2) for row 0's two
# tokens, 1/(2 x 1) for row 1's; seq_mean_token_sum_norm 1/(N T) = 1/4 each. The KL term is
# aggregated the same way as the surrogate.
#   token_mean:              policy (-1.2 - 1 + 1) / 3 = -0.4;   KL 0.5 / 3 = 0.166667
#                            loss -0.4 + 0.1 x 0.166667 = -0.383333
#   seq_mean_token_mean:     policy ((-1.2 - 1) / 2 + 1) / 2 = -0.05;   KL ((1 - ln 2) / 2 + ln 2 - 1/2) / 2
#                            = ln 2 / 4 = 0.173287;  loss -0.05 + 0.0173287 = -0.0326713
#   seq_mean_token_sum_norm: policy -1.2 / 4 = -0.3;   KL 0.5 / 4 = 0.125;   loss -0.3 + 0.0125 = -0.2875
# Gradient per token = w x (surrogate gradient + beta x KL gradient):
#   (0, 0) w x (0 + 0.1 x -1) = -0.1 w;   (0, 1) w x (-1 + 0) = -w;   (1, 0) w x (1 + 0.1 x 0.5) = 1.05 w
#   token_mean (w = 1/3):       [[-0.033333, -0.333333], [0.35, 0]]
#   seq_mean_token_mean:        [[-0.025, -0.25], [0.525, 0]]   (w = 1/4 in row 0, 1/2 in row 1)
#   seq_mean_token_sum_norm:    [[-0.025, -0.25], [0.2625, 0]]  (w = 1/4)
LN2 = math.log(2)
HAND_OLD = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]])
HAND_LOGP = torch.tensor([[-0.5, -1.0], [-1.0, -4.0]])  # (1, 1) is padding
HAND_REF = torch.tensor([[-0.5 + LN2, -1.0], [-1.0 - LN2, 2.0]])
HAND_MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
HAND_ADVANTAGES = torch.tensor([1.0, -1.0])
HAND_GRPO = {  # agg: (loss, surrogate alone, aggregated k3, gradient)
    "token_mean": (-0.4 + 0.1 * 0.5 / 3, -0.4, 0.5 / 3, [[-0.1 / 3, -1 / 3], [1.05 / 3, 0.0]]),
    "seq_mean_token_mean": (-0.05 + 0.1 * LN2 / 4, -0.05, LN2 / 4, [[-0.025, -0.25], [0.525, 0.0]]),
    "seq_mean_token_sum_norm": (-0.3 + 0.1 * 0.125, -0.3, 0.125, [[-0.025, -0.25], [0.2625, 0.0]]),
}
# float32 over a few operations on values of order 1: rounding error < 1e-6
TOL = {"atol": 1e-6, "rtol": 1e-6}


def hand_batch(advantages: torch.Tensor, old: torch.Tensor, mask: torch.Tensor, ref: torch.Tensor | None = None,
               **fields) -> Batch:
    """A batch carrying only what the losses read (log-probs, advantages, mask): the rollout is a shell."""
    n, t = mask.shape
    rollout = Rollout(input_ids=torch.zeros(n, t, dtype=torch.long), attention_mask=mask.long(), prompt_width=0,
                      completion_ids=torch.zeros(n, t, dtype=torch.long), completion_mask=mask, logprobs=old,
                      texts=[""] * n, truncated=torch.zeros(n, dtype=torch.bool))
    rewards = torch.zeros(n)
    return Batch(rollout, [None] * n, 1, rewards, rewards, old, ref_logprobs=ref, advantages=advantages, **fields)


def test_every_agg_mode_has_a_hand_worked_loss():
    assert set(HAND_GRPO) == set(AGG_MODES)


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("algorithm", [GRPO, GRPOZero])
def test_grpo_loss_and_gradient_by_hand(agg, algorithm):
    expected_loss, expected_policy, expected_kl, expected_grad = HAND_GRPO[agg]
    logp = HAND_LOGP.clone().requires_grad_()
    batch = hand_batch(HAND_ADVANTAGES, HAND_OLD, HAND_MASK, HAND_REF)
    loss, stats = algorithm(GRPOParams(beta=0.1, clip_eps=0.2, agg=agg)).policy_loss(logp, batch)
    assert_close(loss, torch.tensor(expected_loss), **TOL)
    assert stats["loss/policy"] == pytest.approx(expected_policy, abs=1e-6)  # the surrogate alone
    assert stats["kl/k3"] == pytest.approx(expected_kl, abs=1e-6)
    # clipped: token (0, 0) of 3 masked tokens (A > 0 with ratio > 1.2)
    assert stats["clip_fraction"] == pytest.approx(1 / 3)
    loss.backward()
    assert_close(logp.grad, torch.tensor(expected_grad), **TOL)


@pytest.mark.parametrize("agg", AGG_MODES)
def test_grpo_loss_without_kl_is_the_surrogate_alone(agg):
    # beta 0: no reference is held (its log-probs are None), the loss is the surrogate above and its
    # gradient w x [[0, -1], [+1, 0]]
    _, expected_policy, _, _ = HAND_GRPO[agg]
    weights = {"token_mean": [[1 / 3, 1 / 3], [1 / 3, 0]], "seq_mean_token_mean": [[0.25, 0.25], [0.5, 0]],
               "seq_mean_token_sum_norm": [[0.25, 0.25], [0.25, 0]]}[agg]
    logp = HAND_LOGP.clone().requires_grad_()
    loss, stats = GRPOZero(GRPOParams(beta=0.0, agg=agg)).policy_loss(logp, hand_batch(HAND_ADVANTAGES, HAND_OLD,
                                                                                          HAND_MASK))
    assert_close(loss, torch.tensor(expected_policy), **TOL)
    assert "kl/k3" not in stats
    loss.backward()
    assert_close(logp.grad, torch.tensor(weights) * torch.tensor([[0.0, -1.0], [1.0, 0.0]]), **TOL)


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
