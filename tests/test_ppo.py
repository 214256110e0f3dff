"""PPO: per-token rewards, GAE with whitening, the policy and value losses (value and gradient) by hand;
roles; and a value update on a real batch that lowers the value loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from rlbench.algorithms.base import Batch
from rlbench.algorithms.losses import masked_mean
from rlbench.algorithms.params import AGG_MODES
from rlbench.algorithms.ppo import PPO, PPOParams, token_rewards
from rlbench.catalog import load_problems
from rlbench.config import TaskConfig
from rlbench.models.batching import position_ids_from_mask
from rlbench.models.embedded import build_embedded
from rlbench.models.heads import ScalarHeadModel
from rlbench.models.optim import adamw
from rlbench.rewards import gold_correct
from rlbench.rollout import Rollout, SamplingParams
from rlbench.rollout.hf import HFEngine
from rlbench.tasks import encode_prompts
from tests.tolerances import assert_reordered_close, llama_chain_terms

# ---- per-token rewards, by hand -----------------------------------------------------------------

LOGPROBS = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.0, 0.0]])
REF_LOGPROBS = torch.tensor([[-1.5, -2.0, -2.0], [-1.0, -1.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # row 1 ends after two tokens
SCORES = torch.tensor([2.0, 1.0])


def test_token_rewards_kl_at_every_token_score_at_the_last_real_one():
    # k1 = logp - ref: row 0 [0.5, 0, -1], row 1 [0.5, 0, (pad)]; times -kl_coef = -0.1:
    # row 0 [-0.05, 0, 0.1] + score 2 at t=2 -> [-0.05, 0, 2.1]
    # row 1 [-0.05, 0, 0] + score 1 at t=1 (its last real token), padding stays 0 -> [-0.05, 1, 0]
    rewards = token_rewards(SCORES, LOGPROBS, REF_LOGPROBS, MASK, kl_coef=0.1)
    assert_close(rewards, torch.tensor([[-0.05, 0.0, 2.1], [-0.05, 1.0, 0.0]]))


def test_token_rewards_without_kl_is_the_score_alone():
    expected = torch.tensor([[0.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    assert_close(token_rewards(SCORES, LOGPROBS, None, MASK, kl_coef=0.1), expected)  # no reference
    assert_close(token_rewards(SCORES, LOGPROBS, REF_LOGPROBS, MASK, kl_coef=0.0), expected)
    # kl_coef 0 means no penalty at all, not 0 x KL: a token the reference gives no probability
    # (log-prob -inf, KL inf) must not turn the rewards into NaN (0 x inf)
    impossible = REF_LOGPROBS.clone()
    impossible[0, 1] = -math.inf
    assert_close(token_rewards(SCORES, LOGPROBS, impossible, MASK, kl_coef=0.0), expected)


# ---- roles and group size -------------------------------------------------------------------------


def test_ppo_roles_by_reward_source():
    assert set(PPO(PPOParams(), "model").roles()) == {"policy", "value", "reference", "reward"}
    assert set(PPO(PPOParams()).roles()) == {"policy", "value", "reference", "reward"}  # model is the default
    assert set(PPO(PPOParams(), "both").roles()) == {"policy", "value", "reference", "reward"}
    assert set(PPO(PPOParams(), "rules").roles()) == {"policy", "value", "reference"}
    assert set(PPO(PPOParams(kl_coef=0.0), "rules").roles()) == {"policy", "value"}  # no KL, no reference


def test_value_model_starts_from_the_reward_model_when_the_run_holds_one():
    assert PPO(PPOParams(), "model").value_init() == "reward"  # InstructGPT
    assert PPO(PPOParams(), "both").value_init() == "reward"
    assert PPO(PPOParams(), "rules").value_init() == "policy"  # no reward model: the SFT policy, fresh head
    assert PPO(PPOParams(value_init="policy"), "model").value_init() == "policy"
    assert PPO(PPOParams(value_init="reward"), "rules").value_init() == "reward"


def test_a_one_token_completion_gets_its_score_on_that_token():
    # mask [[1, 0]]: the last real token is t = 0, so the score 2 lands there (not on the pad), no KL;
    # values 0, gamma 1: A = [2, 0], returns [2, 0]; the mean token reward over 1 real token: 2
    mask = torch.tensor([[1.0, 0.0]])
    batch = hand_batch(mask, torch.zeros(1, 2), rewards=torch.tensor([2.0]), values=torch.zeros(1, 2))
    PPO(PPOParams(kl_coef=0.0, whiten_advantages=False)).compute_advantages(batch)
    assert_close(batch.advantages, torch.tensor([[2.0, 0.0]]))
    assert batch.stats["ppo/token_reward_mean"] == 2.0
    # an empty completion (no real token) still holds its score at t = 0 rather than losing it
    assert_close(token_rewards(torch.tensor([3.0]), torch.zeros(1, 2), None, torch.zeros(1, 2), 0.1),
                 torch.tensor([[3.0, 0.0]]))


def test_ppo_samples_one_completion_per_prompt_by_default():
    assert PPOParams().completions_per_prompt(default=4) == 1
    assert PPOParams(group_size=2).completions_per_prompt(default=4) == 2


# ---- a real batch from the embedded model ---------------------------------------------------------


@pytest.fixture(scope="module")
def ppo_setup():
    """A fixed rollout of 8 real prompts sampled from the embedded model."""
    torch.manual_seed(0)
    policy, tokenizer = build_embedded(0)
    problems = load_problems(TaskConfig(), "train", 8, seed=0)
    rollout = HFEngine(policy, tokenizer).generate(encode_prompts(tokenizer, problems), 1, SamplingParams(12), seed=0)
    return rollout, problems


def fresh_value_model() -> ScalarHeadModel:
    """A value model as PPO's `value_init: policy` makes it: a backbone with a fresh zero head."""
    backbone = build_embedded(2)[0]
    return ScalarHeadModel(backbone.model, backbone.config.hidden_size)


def make_batch(rollout, problems, value_model: ScalarHeadModel) -> Batch:
    scores = torch.linspace(-1.0, 1.0, len(problems))  # a spread of sequence scores
    batch = Batch(rollout, problems, 1, scores, torch.tensor(gold_correct(rollout.texts, problems)),
                  old_logprobs=rollout.logprobs, ref_logprobs=rollout.logprobs - 0.1 * rollout.completion_mask)
    with torch.no_grad():
        batch.values = value_model.completion_values(rollout.input_ids, rollout.attention_mask, rollout.prompt_width)
    return batch


# ---- advantages, policy loss and value loss by hand --------------------------------------------


def hand_batch(mask: torch.Tensor, old: torch.Tensor, **fields) -> Batch:
    """A batch carrying only the tensors PPO's math reads; the rollout is a shell around the mask."""
    n, t = mask.shape
    rollout = Rollout(input_ids=torch.zeros(n, t, dtype=torch.long), attention_mask=mask.long(), prompt_width=0,
                      completion_ids=torch.zeros(n, t, dtype=torch.long), completion_mask=mask, logprobs=old,
                      texts=[""] * n, truncated=torch.zeros(n, dtype=torch.bool))
    rewards = fields.pop("rewards", torch.zeros(n))
    return Batch(rollout, [None] * n, 1, rewards, rewards, old, **fields)


# The per-token rewards above (kl_coef 0.1): [[-0.05, 0, 2.1], [-0.05, 1, (pad)]]. Values
# [[0.5, 0.6, 0.7], [0.4, 0.2, 9 (pad garbage)]], gamma 1, lam 0.5; V after the last real token is 0.
# Row 0: deltas r + V_next - V: -0.05 + 0.6 - 0.5 = 0.05, 0 + 0.7 - 0.6 = 0.1, 2.1 + 0 - 0.7 = 1.4
#        A2 = 1.4, A1 = 0.1 + 0.5 x 1.4 = 0.8, A0 = 0.05 + 0.5 x 0.8 = 0.45; returns A + V = 0.95, 1.4, 2.1
# Row 1: deltas -0.05 + 0.2 - 0.4 = -0.25, 1 + 0 - 0.2 = 0.8 (not 1 + 9 - 0.2: the pad is not bootstrapped)
#        A1 = 0.8, A0 = -0.25 + 0.5 x 0.8 = 0.15; returns 0.55, 1.0, (pad) 0
# Whitened over the 5 real tokens [0.45, 0.8, 1.4, 0.15, 0.8]: mean 3.6 / 5 = 0.72, deviations
# -0.27, 0.08, 0.68, -0.57, 0.08, population variance (0.0729 + 0.0064 + 0.4624 + 0.3249 + 0.0064) / 5
# = 0.1746, std 0.417852 -> -0.646162, 0.191456, 1.627372, -1.364120, 0.191456.
HAND_VALUES = torch.tensor([[0.5, 0.6, 0.7], [0.4, 0.2, 9.0]])
RAW_ADVANTAGES = torch.tensor([[0.45, 0.8, 1.4], [0.15, 0.8, 0.0]])
RETURNS = torch.tensor([[0.95, 1.4, 2.1], [0.55, 1.0, 0.0]])
WHITENED = torch.tensor([[-0.27, 0.08, 0.68], [-0.57, 0.08, 0.0]]) / math.sqrt(0.1746)


@pytest.mark.parametrize(("whiten", "expected"), [(False, RAW_ADVANTAGES), (True, WHITENED)])
def test_advantages_are_whitened_gae_by_hand(whiten, expected):
    batch = hand_batch(MASK, LOGPROBS, rewards=SCORES, ref_logprobs=REF_LOGPROBS, values=HAND_VALUES)
    PPO(PPOParams(kl_coef=0.1, gamma=1.0, lam=0.5, whiten_advantages=whiten)).compute_advantages(batch)
    # float32, a handful of operations on values of order 1 (the whitening divides by 0.418): error < 1e-6
    assert_close(batch.advantages, expected, atol=1e-6, rtol=1e-6)
    assert_close(batch.returns, RETURNS, atol=1e-6, rtol=1e-6)  # value targets are never whitened
    # mean token reward: (-0.05 + 0 + 2.1 - 0.05 + 1) / 5 real tokens = 0.6
    assert batch.stats["ppo/token_reward_mean"] == pytest.approx(0.6, abs=1e-6)


# Policy loss, clip_eps 0.2, per-token advantages; the padded (1, 2) holds garbage:
#   token   logp - old   ratio            A      -min(ratio A, clip(ratio) A)                    d/dlogp
#   (0, 0)  0.5          e^0.5 = 1.64872  +1     clipped to 1.2            -> -1.2               0
#   (0, 1)  0            1                -1     +1                                              -ratio A = 1
#   (0, 2)  -0.5         e^-0.5 = 0.60653 +2     min(1.21306, 0.8 x 2 = 1.6) -> -1.21306         -1.21306
#   (1, 0)  0            1                +0.5   -0.5                                            -0.5
#   (1, 1)  0.5          1.64872          -2     min(-3.29744, -2.4) = -3.29744 -> +3.29744      +3.29744
# sum of the five: 1.38438
#   token_mean:              1.38438 / 5 = 0.276876;          gradient / 5
#   seq_mean_token_mean:     ((-1.2 + 1 - 1.21306) / 3 + (-0.5 + 3.29744) / 2) / 2 = 0.463850;
#                            gradient / 6 in row 0, / 4 in row 1
#   seq_mean_token_sum_norm: 1.38438 / (2 x 3) = 0.230730;    gradient / 6
E_HALF, E_MINUS_HALF = math.exp(0.5), math.exp(-0.5)
POLICY_OLD = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
POLICY_LOGP = torch.tensor([[-0.5, -1.0, -1.5], [-1.0, -0.5, 5.0]])
POLICY_ADVANTAGES = torch.tensor([[1.0, -1.0, 2.0], [0.5, -2.0, 100.0]])
POLICY_GRAD = torch.tensor([[0.0, 1.0, -2 * E_MINUS_HALF], [-0.5, 2 * E_HALF, 0.0]])
POLICY_SUM = -1.2 + 1.0 - 2 * E_MINUS_HALF - 0.5 + 2 * E_HALF
HAND_PPO_POLICY = {
    "token_mean": (POLICY_SUM / 5, POLICY_GRAD / 5),
    "seq_mean_token_mean": (((-1.2 + 1.0 - 2 * E_MINUS_HALF) / 3 + (-0.5 + 2 * E_HALF) / 2) / 2,
                            POLICY_GRAD / torch.tensor([[6.0], [4.0]])),
    "seq_mean_token_sum_norm": (POLICY_SUM / 6, POLICY_GRAD / 6),
}


@pytest.mark.parametrize("agg", AGG_MODES)
def test_ppo_policy_loss_and_gradient_by_hand(agg):
    expected_loss, expected_grad = HAND_PPO_POLICY[agg]
    logp = POLICY_LOGP.clone().requires_grad_()
    batch = hand_batch(MASK, POLICY_OLD, advantages=POLICY_ADVANTAGES)
    loss, stats = PPO(PPOParams(clip_eps=0.2, agg=agg)).policy_loss(logp, batch)
    assert_close(loss, torch.tensor(expected_loss), atol=1e-6, rtol=1e-6)  # float32, a few ops of order 1
    assert stats["loss/policy"] == pytest.approx(expected_loss, abs=1e-6)
    assert stats["clip_fraction"] == pytest.approx(1 / 5)  # token (0, 0) only: A > 0 with ratio > 1.2
    loss.backward()
    assert_close(logp.grad, expected_grad, atol=1e-6, rtol=1e-6)


def test_every_agg_mode_has_a_hand_worked_ppo_loss():
    assert set(HAND_PPO_POLICY) == set(AGG_MODES)


def test_ppo_value_loss_and_gradient_by_hand():
    # vf_clip 0.2, vf_coef 0.1; per real token max((V - R)^2, (clip(V, V_old -+ 0.2) - R)^2):
    #   (0, 0) V 1.0, V_old 0.5 -> clipped 0.7, R 2: max(1, 1.69) = 1.69 (clipped: gradient 0)
    #   (0, 1) V 0.6 within 0.5 -+ 0.2, R 2: 1.96, d/dV 2 (V - R) = -2.8
    #   (0, 2) V 0 = V_old, R 0.5: 0.25, d/dV -1
    #   (1, 0) V 2 = V_old, R 1: 1, d/dV 2
    #   (1, 1) V 0.2, V_old 0.5 -> clipped 0.3, R 1: max(0.64, 0.49) = 0.64 (unclipped), d/dV -1.6
    # loss 0.1 x 0.5 x (1.69 + 1.96 + 0.25 + 1 + 0.64) / 5 = 0.05 x 5.54 / 5 = 0.0554
    # gradient 0.1 x 0.5 / 5 = 0.01 x d/dV: [[0, -0.028, -0.01], [0.02, -0.016, 0 (pad)]]
    values = torch.tensor([[1.0, 0.6, 0.0], [2.0, 0.2, 5.0]], requires_grad=True)
    batch = hand_batch(MASK, POLICY_OLD, values=torch.tensor([[0.5, 0.5, 0.0], [2.0, 0.5, 0.0]]),
                       returns=torch.tensor([[2.0, 2.0, 0.5], [1.0, 1.0, -3.0]]))
    loss, stats = PPO(PPOParams(vf_clip=0.2, vf_coef=0.1)).value_loss(values, batch)
    assert_close(loss, torch.tensor(0.0554), atol=1e-7, rtol=1e-6)  # float32 sums of order 1, x 0.01
    assert stats["loss/value"] == pytest.approx(0.0554, abs=1e-7)
    loss.backward()
    assert_close(values.grad, torch.tensor([[0.0, -0.028, -0.01], [0.02, -0.016, 0.0]]), atol=1e-7, rtol=1e-6)


def test_advantages_of_a_real_batch_are_whitened(ppo_setup):
    rollout, problems = ppo_setup
    batch = make_batch(rollout, problems, fresh_value_model())
    PPO(PPOParams(kl_coef=0.05)).compute_advantages(batch)
    mask = batch.mask
    assert masked_mean(batch.advantages, mask).abs() < 1e-5
    assert_close(masked_mean(batch.advantages ** 2, mask), torch.tensor(1.0), atol=1e-4, rtol=0)
    assert (batch.advantages * (1 - mask) == 0).all()


def test_value_updates_lower_the_value_loss(ppo_setup):
    rollout, problems = ppo_setup
    value_model = fresh_value_model()
    algorithm = PPO(PPOParams())
    batch = make_batch(rollout, problems, value_model)
    algorithm.compute_advantages(batch)
    optimizer = adamw(value_model.parameters(), lr=algorithm.params.value_lr)  # 1e-4

    def value_loss() -> torch.Tensor:
        values = value_model.completion_values(rollout.input_ids, rollout.attention_mask, rollout.prompt_width)
        return algorithm.value_loss(values, batch)[0]

    with torch.no_grad():
        before = value_loss().item()
    # the zero head predicts V = 0 everywhere, so the loss is 0.1 * 0.5 * mean(R^2) > 0
    assert before > 0 and math.isfinite(before)
    for _ in range(10):  # measured: 0.0135 -> 0.0093
        loss = value_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = value_loss().item()
    assert after < 0.9 * before, (before, after)


def test_packed_values_equal_the_module_forward_on_real_tokens(ppo_setup):
    rollout, _ = ppo_setup
    value_model = fresh_value_model()
    torch.nn.init.normal_(value_model.head.weight, std=0.5)  # a non-zero head, so values differ by position
    r, mask = rollout, rollout.completion_mask.bool()
    packed = value_model.completion_values(r.input_ids, r.attention_mask, r.prompt_width)
    module = value_model(r.input_ids, r.attention_mask)[:, r.prompt_width - 1: -1]
    assert packed.shape == module.shape
    # Packed real tokens against every position of every row: any product's sums may be reordered, so
    # k is the decoder chain, forward (tests/tolerances.py). A value is an H-term sum of hidden * head
    # weight whose terms cancel, so its magnitude is sum |hidden| |weight|, not |value|.
    with torch.no_grad():
        hidden = value_model.backbone(input_ids=r.input_ids, attention_mask=r.attention_mask,
                                      position_ids=position_ids_from_mask(r.attention_mask)).last_hidden_state
        magnitude = float((hidden.abs() @ value_model.head.weight.abs().T).max() + value_model.head.bias.abs())
    terms = llama_chain_terms(value_model.backbone.config, r.input_ids.shape[1], backward=False)
    assert_reordered_close(packed[mask].detach(), module[mask].detach(), terms, magnitude)
    assert (packed[~mask] == 0).all()
    assert packed[mask].std() > 0.01  # not trivially equal
