"""PPO: per-token rewards by hand, roles, whitening, and a value update that lowers the value loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from rlbench.algorithms.advantages import gae
from rlbench.algorithms.base import Batch
from rlbench.algorithms.losses import masked_mean
from rlbench.algorithms.ppo import PPO, PPOParams, token_rewards
from rlbench.catalog import load_problems
from rlbench.config import TaskConfig
from rlbench.models.batching import position_ids_from_mask
from rlbench.models.embedded import build_embedded
from rlbench.models.heads import ScalarHeadModel
from rlbench.models.optim import adamw
from rlbench.rewards import gold_correct
from rlbench.rollout import SamplingParams
from rlbench.rollout.hf import HFEngine
from rlbench.tasks import encode_prompts
from tests.tolerances import assert_reordered_close, llama_chain_terms, reorder_atol

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


# ---- roles and group size -------------------------------------------------------------------------


def test_ppo_roles_by_reward_source():
    assert set(PPO(PPOParams(), "model").roles()) == {"policy", "value", "reference", "reward"}
    assert set(PPO(PPOParams()).roles()) == {"policy", "value", "reference", "reward"}  # model is the default
    assert set(PPO(PPOParams(), "both").roles()) == {"policy", "value", "reference", "reward"}
    assert set(PPO(PPOParams(), "rules").roles()) == {"policy", "value", "reference"}
    assert set(PPO(PPOParams(kl_coef=0.0), "rules").roles()) == {"policy", "value"}  # no KL, no reference


def test_ppo_samples_one_completion_per_prompt_by_default():
    assert PPO(PPOParams()).group_size(default=4) == 1
    assert PPO(PPOParams(group_size=2)).group_size(default=4) == 2


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


def test_advantages_are_whitened_gae(ppo_setup):
    rollout, problems = ppo_setup
    value_model = fresh_value_model()
    params = PPOParams(kl_coef=0.05, gamma=1.0, lam=0.95)
    raw = make_batch(rollout, problems, value_model)
    PPO(PPOParams(kl_coef=0.05, whiten_advantages=False)).compute_advantages(raw)
    rewards = token_rewards(raw.rewards, raw.old_logprobs, raw.ref_logprobs, raw.mask, 0.05)
    expected, returns = gae(rewards, raw.values, raw.mask, 1.0, 0.95)
    assert_close(raw.advantages, expected)
    assert_close(raw.returns, returns)

    whitened = make_batch(rollout, problems, value_model)
    PPO(params).compute_advantages(whitened)
    mask = whitened.mask
    # float32 sums in a kernel's order (tests/tolerances.py), as in test_advantages: n terms each of
    # magnitude up to s = max |A| / std(A) (raw advantages); k = 2n for the mean, 3n for the variance.
    kept = raw.advantages[mask.bool()]
    n, s = len(kept), float(kept.abs().max() / kept.std(unbiased=False))
    assert masked_mean(whitened.advantages, mask).abs() < reorder_atol(2 * n, s)
    assert_close(masked_mean(whitened.advantages ** 2, mask), torch.tensor(1.0), atol=reorder_atol(3 * n, s * s), rtol=0)
    assert_close(whitened.returns, returns)  # value targets are not whitened
    assert (whitened.advantages * (1 - mask) == 0).all()


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
