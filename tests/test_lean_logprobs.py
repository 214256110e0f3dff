"""Lean log-probs: the LM head a chunk of tokens at a time, and micro-batches with accumulated
gradients, give the numbers of one whole-batch pass, up to the float32 rounding of sums taken in
another order (tolerances derived in tests/tolerances.py)."""

from __future__ import annotations

import pytest
import torch

from rlbench.algorithms.losses import entropy_from_logits
from rlbench.config import load_suite
from rlbench.models import forward
from rlbench.models.batching import micro_batches
from rlbench.models.embedded import build_embedded, save_pretrained_pair
from rlbench.models.forward import (
    completion_logprobs_and_entropy,
    gather_logprobs,
    packed_logits,
    scatter_rows,
)
from rlbench.rollout import SamplingParams
from rlbench.rollout.hf import HFEngine
from rlbench.train import Run
from tests.tolerances import assert_reordered_close, llama_chain_terms, reorder_atol

SUITE = """
name: lean
model: {name: embedded, sft: {steps: 0}, micro_batch_size: MICRO}
task: {name: synthetic, max_steps: 1, train_size: 200}
algorithms:
  - name: ppo
    reward: rules
    rewards: {answer_correct: 1.0, tag_count: 1.0}
    params: {lr: 1.0e-3, ppo_epochs: 1, num_minibatches: 1}
budget: {steps: 1}
rollout: {completions_per_step: 8, group_size: 4, max_new_tokens: 12}
probe: cpu
"""


@pytest.fixture(scope="module")
def model_and_rollout():
    model, tokenizer = build_embedded(seed=0)
    prompts = [tokenizer(f"Q: {a} plus {b}?\n")["input_ids"] for a, b in ((3, 4), (12, 30))]
    rollout = HFEngine(model, tokenizer).generate(prompts, 4, SamplingParams(max_new_tokens=16, temperature=1.3), seed=1)
    assert rollout.completion_mask.sum() > 40  # some rows run longer than others: padding is exercised
    return model, rollout


def whole_batch(model, r, temperature):
    """Today's computation before chunking: every token's logits at once. Also returns the largest
    |logit / temperature|, the magnitude of the sums behind a log-prob and an entropy."""
    logits, index = packed_logits(model, r.input_ids, r.attention_mask, r.prompt_width, 4)
    logprobs = gather_logprobs(logits, r.completion_ids.flatten()[index], temperature)
    entropy = entropy_from_logits(logits.float())
    shape = tuple(r.completion_ids.shape)
    largest = float(logits.detach().abs().max()) / min(temperature, 1.0)
    return scatter_rows(logprobs, index, shape), scatter_rows(entropy, index, shape), largest


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_logprobs_entropy_and_gradients_equal_the_whole_batch(model_and_rollout, monkeypatch, temperature):
    model, r = model_and_rollout
    model.zero_grad(set_to_none=True)  # the model is the module's: start from no gradients, whatever ran before
    weights = torch.randn(r.completion_ids.shape, generator=torch.Generator().manual_seed(0))
    expected_lp, expected_ent, largest_logit = whole_batch(model, r, temperature)
    (expected_lp * weights).sum().backward()
    expected_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)

    # 5 tokens per chunk (398-token vocabulary x 4 bytes x 5): the LM head runs in many chunks.
    monkeypatch.setattr(forward, "LOGITS_CHUNK_BYTES", 4 * 398 * 5)
    lp, ent = completion_logprobs_and_entropy(model, r.input_ids, r.attention_mask, r.prompt_width,
                                              r.completion_ids, temperature, group_size=4)
    (lp * weights).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)  # before asserting: a failure leaves the next test a clean model

    # Chunking reorders the LM head's sums only; the decoder below it runs the same products on the
    # same rows. A kernel may block a [5, H] x [H, V] product differently from a [128, H] one: a logit
    # is an H-term sum, a log-prob or an entropy then a V-term sum over logits, so k = H + V = 526, of
    # magnitude the larger of |logit / T| and |log-prob| (about 10): 2 k u 10 = 6e-4 (tests/tolerances.py).
    # Measured here: 5e-7 and 1.4e-6 at most (AMD EPYC, AVX2).
    config = model.config
    head_terms = config.hidden_size + config.vocab_size
    scale = max(largest_logit, float(expected_lp.detach().abs().max()))
    assert_reordered_close(lp, expected_lp, head_terms, scale, msg="log-probs")
    assert_reordered_close(ent, expected_ent, head_terms, scale, msg="entropies")
    # Gradients: the LM head's backward sums over the vocabulary (the gradient of its input) and over
    # the tokens (its weight's gradient, now chunk by chunk); the decoder then carries that input
    # gradient down unchanged in order. k = H + V + tokens = 654, at each tensor's largest
    # |gradient|: 2 k u = 7.8e-5 of it. Measured here: 3e-7 of it at most (AMD EPYC, AVX2).
    grad_terms = head_terms + int(r.completion_mask.sum())
    for (name, _), g, g_chunked in zip(model.named_parameters(), expected_grads, grads):
        assert_reordered_close(g_chunked, g, grad_terms, msg=name)


def test_micro_batches_are_whole_groups_or_single_rows() -> None:
    assert [(rows.tolist(), g) for rows, g in micro_batches(8, None, 4)] == [(list(range(8)), 4)]
    assert [(rows.tolist(), g) for rows, g in micro_batches(8, 5, 4)] == [([0, 1, 2, 3], 4), ([4, 5, 6, 7], 4)]
    assert [(rows.tolist(), g) for rows, g in micro_batches(6, 4, 2)] == [([0, 1, 2, 3], 2), ([4, 5], 2)]
    assert [(rows.tolist(), g) for rows, g in micro_batches(4, 3, 4)] == [([0, 1, 2], 1), ([3], 1)]


def one_update(tmp_path, micro: str) -> tuple[Run, dict]:
    """One PPO step (policy and value updates) of the embedded model with `micro_batch_size: micro`."""
    path = tmp_path / f"suite-{micro}.yaml"
    path.write_text(SUITE.replace("MICRO", micro))
    suite = load_suite(path)
    model, tokenizer = build_embedded(seed=0)
    policy_dir = save_pretrained_pair(model, tokenizer, tmp_path / "policy")
    from rlbench.measure.probing import NullProbe

    run = Run.build(suite, suite.algorithms[0], 0, policy_dir, None, NullProbe())
    return run, run.step()


def test_micro_batched_updates_give_the_same_gradients(tmp_path, monkeypatch) -> None:
    # The same step three ways: the whole minibatch, micro-batches of one group (4 rows), and single
    # rows that share no prompt (3 < G = 4). Same seed: same samples, rewards, advantages and losses.
    widths, tokens = [], []

    def seeded_rewards(self, rollout, problems):
        """Rewards that vary (a fresh model earns none from the rules), the same for every run."""
        widths.append(rollout.input_ids.shape[1])
        tokens.append(int(rollout.completion_mask.sum()))
        return torch.randn(len(problems), generator=torch.Generator().manual_seed(7)), {}

    monkeypatch.setattr(Run, "_score", seeded_rewards)
    runs = [one_update(tmp_path, micro) for micro in ("null", "4", "3")]
    assert runs[0][1]["learning/grad_norm"] > 1 and runs[0][1]["loss/value"] > 0.01  # a real update (6.4, 0.031)
    # Every product runs on fewer rows per call, so any of its sums may be reordered (k: the whole
    # decoder chain over the longest sequence, tests/tolerances.py), and every weight gradient and
    # every statistic is summed over the tokens micro-batch by micro-batch (k adds the tokens).
    config = runs[0][0].policy.config
    forward_terms = llama_chain_terms(config, max(widths), max(tokens), backward=False)
    backward_terms = llama_chain_terms(config, max(widths), max(tokens))
    (whole, stats), others = runs[0], runs[1:]
    for run, other_stats in others:
        for key in ("loss/policy", "loss/value", "learning/entropy", "learning/grad_norm"):
            # Each is a mean over tokens (or, for the norm, a function with condition number 1) of
            # per-token values of magnitude at most max(|mean|, 1): advantages are whitened (mean |A| <=
            # RMS(A) = 1, and the ratio is 1 on the first epoch), value-loss terms are positive,
            # entropies at most log V = 6. 2 k u max(|x|, 1) is 6e-4 to 8e-3 here; measured: 5e-7 at most.
            terms = backward_terms if key == "learning/grad_norm" else forward_terms
            tolerance = reorder_atol(terms, max(abs(stats[key]), 1.0))
            assert other_stats[key] == pytest.approx(stats[key], abs=tolerance), key
        for model_a, model_b in ((whole.policy, run.policy), (whole.value_model, run.value_model)):
            for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
                # Gradients, not parameters after AdamW: its first step is about lr * sign(grad), so a
                # near-zero gradient's last-bit difference can move a parameter by up to lr.
                # 2 k u = 1.2e-3 of each tensor's largest |gradient|; measured: 5.7e-7 of it at most.
                assert_reordered_close(b.grad, a.grad, backward_terms, msg=name)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_reference_logprobs_skip_the_entropy_and_give_the_same_numbers(model_and_rollout, temperature):
    """completion_logprobs (the reference's and old log-probs) computes no entropy; its log-probs are
    those the update computes with entropies, bit for bit (the same operations on the same rows),
    and at T = 1 the entropy reuses their logsumexp: it equals the one computed on its own, exactly."""
    from rlbench.models.forward import completion_logprobs, token_logprobs

    model, r = model_and_rollout
    with torch.no_grad():
        alone = completion_logprobs(model, r.input_ids, r.attention_mask, r.prompt_width, r.completion_ids,
                                    temperature, group_size=4)
        lp, _ = completion_logprobs_and_entropy(model, r.input_ids, r.attention_mask, r.prompt_width,
                                                r.completion_ids, temperature, group_size=4)
        assert torch.equal(alone, lp)
        logits = torch.randn(7, 398, generator=torch.Generator().manual_seed(0)) * 5
        tokens = torch.arange(7)
        logprobs, entropy = token_logprobs(logits, tokens, temperature)
        assert token_logprobs(logits, tokens, temperature, entropy=False)[1] is None
        assert torch.equal(logprobs, gather_logprobs(logits, tokens, temperature))
        assert torch.equal(entropy, torch.logsumexp(logits, -1) - (logits.softmax(-1) * logits).sum(-1))
