"""Gradient checkpointing with groups of completions: the module keeps no cache while it trains, so
the log-probs run every row in full, and equal (values and gradients) those of the shared-prompt
forward without checkpointing, on the embedded model, up to float32 sums taken in another order."""

from __future__ import annotations

import copy

import torch

from rlbench.config import load_suite
from rlbench.models.embedded import build_embedded, save_pretrained_pair
from rlbench.models.forward import completion_logprobs_and_entropy, recomputes_in_backward
from rlbench.models.loading import _enable_gradient_checkpointing
from rlbench.rollout import SamplingParams
from rlbench.rollout.hf import HFEngine
from rlbench.train import Run
from tests.tolerances import assert_reordered_close, llama_chain_terms

SUITE = """
name: checkpointing
model: {name: embedded, sft: {steps: 0}, gradient_checkpointing: true}
task: {name: synthetic, max_steps: 1, train_size: 16}
algorithms:
  - name: grpo_zero
budget: {steps: 1}
rollout: {completions_per_step: 8, group_size: 4, max_new_tokens: 8}
probe: cpu
threads: 1
"""


def test_checkpointed_logprobs_with_groups_equal_the_shared_prompt_forward() -> None:
    model, tokenizer = build_embedded(seed=0)
    prompts = [tokenizer(f"Q: {a} plus {b}?\n")["input_ids"] for a, b in ((3, 4), (12, 30))]
    r = HFEngine(model, tokenizer).generate(prompts, 4, SamplingParams(max_new_tokens=12, temperature=1.3), seed=1)
    checkpointed = copy.deepcopy(model)
    _enable_gradient_checkpointing(checkpointed)
    assert not recomputes_in_backward(checkpointed.eval())  # not training: nothing recomputed, the cache kept
    model.train()
    checkpointed.train()
    assert recomputes_in_backward(checkpointed) and not recomputes_in_backward(model)
    weights = torch.randn(r.completion_ids.shape, generator=torch.Generator().manual_seed(0))
    outputs = []
    for m in (model, checkpointed):
        lp, ent = completion_logprobs_and_entropy(m, r.input_ids, r.attention_mask, r.prompt_width,
                                                  r.completion_ids, 1.0, group_size=4)
        (lp * weights).sum().backward()
        outputs.append((lp, ent, [p.grad for p in m.parameters()]))
    (lp, ent, grads), (lp_c, ent_c, grads_c) = outputs
    assert r.completion_mask.sum() > 20 and lp.abs().sum() > 1  # real tokens, real log-probs
    # Every row in full against the prompt once per group: every product runs on other rows, so any
    # of its sums may be reordered: k is the whole decoder chain (tests/tolerances.py), of magnitude
    # the largest |log-prob| (log-probs and entropies are logits less a log-sum-exp), forward only:
    # 2 k u 8.4 = 5e-3 here. The gradients add the backward chain and the tokens each weight gradient
    # sums: 1.2e-3 of each tensor's largest |gradient|. Measured here (AMD EPYC, AVX2): log-probs equal,
    # gradients 9e-7 of that.
    width, tokens = r.input_ids.shape[1], int(r.completion_mask.sum())
    scale = float(lp.detach().abs().max())
    assert_reordered_close(lp_c, lp, llama_chain_terms(model.config, width, tokens, backward=False), scale,
                           msg="log-probs")
    assert_reordered_close(ent_c, ent, llama_chain_terms(model.config, width, tokens, backward=False), scale,
                           msg="entropies")
    for (name, _), g_c, g in zip(model.named_parameters(), grads_c, grads):
        assert_reordered_close(g_c, g, llama_chain_terms(model.config, width, tokens), msg=name)


def test_a_step_with_checkpointing_and_groups_runs(tmp_path) -> None:
    # Raised AttributeError ('NoneType' object has no attribute 'batch_repeat_interleave') before.
    from rlbench.measure.probing import NullProbe

    path = tmp_path / "suite.yaml"
    path.write_text(SUITE)
    suite = load_suite(path)
    model, tokenizer = build_embedded(seed=0)
    run = Run.build(suite, suite.algorithms[0], 0, save_pretrained_pair(model, tokenizer, tmp_path / "policy"), None,
              NullProbe())
    assert recomputes_in_backward(run.policy) and run.group_size == 4
    stats = run.step()
    assert stats["completions"] == 8 and torch.isfinite(torch.tensor(stats["learning/grad_norm"]))
