"""Micro-benchmarks of the pieces every RL step is made of.

    make bench                                        # save, and compare with the last saved run
    .venv/bin/python -m pytest benchmarks/test_micro.py --benchmark-only --benchmark-group-by=group

Shapes: the CPU suites' (64 completions in groups of 4, 40 new tokens, the embedded model's
vocabulary) and larger GPU-like ones (1024 completions in groups of 16, 256 tokens, a 32k
vocabulary), so a change that only shows at scale still shows here.
"""

from __future__ import annotations

import pytest
import torch

from rlbench.algorithms.advantages import gae, group_advantages
from rlbench.algorithms.losses import clipped_policy_loss
from rlbench.models.forward import gather_logprobs
from rlbench.tasks.synthetic import generate_problems


def test_generate_twenty_thousand_problems(benchmark) -> None:
    """A task of train_size 20,000: 1.16 to 1.45 s a round here (3 rounds, idle 2-core machine)."""
    benchmark.group = "tasks"
    problems = benchmark.pedantic(generate_problems, args=("train", 20000, 0, 1, 4), rounds=3, iterations=1)
    assert len(problems) == 20000


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("completions,group_size", [(64, 4), (1024, 16)])
def test_group_advantages(benchmark, completions: int, group_size: int) -> None:
    benchmark.group = "advantages"
    rewards = torch.randint(0, 2, (completions,), generator=_generator()).float()
    advantages = benchmark(group_advantages, rewards, group_size)
    assert advantages.shape == (completions,)
    torch.testing.assert_close(advantages.view(-1, group_size).sum(1), torch.zeros(completions // group_size),
                               atol=1e-4, rtol=0)  # each group's advantages are centred


@pytest.mark.parametrize("completions,tokens", [(64, 40), (256, 256)])
def test_gae(benchmark, completions: int, tokens: int) -> None:
    benchmark.group = "advantages"
    g = _generator()
    rewards, values = torch.randn(completions, tokens, generator=g), torch.randn(completions, tokens, generator=g)
    mask = torch.ones(completions, tokens)
    advantages, returns = benchmark(gae, rewards, values, mask, 1.0, 0.95)
    assert advantages.shape == returns.shape == (completions, tokens)


@pytest.mark.parametrize("completions,tokens", [(64, 40), (1024, 256)])
def test_clipped_policy_loss(benchmark, completions: int, tokens: int) -> None:
    benchmark.group = "losses"
    g = _generator()
    logp = (torch.randn(completions, tokens, generator=g) * 0.1 - 2).requires_grad_()
    old_logp = logp.detach() + torch.randn(completions, tokens, generator=g) * 0.05
    advantages = torch.randn(completions, generator=g)
    mask = torch.ones(completions, tokens)

    def loss_and_grad() -> torch.Tensor:
        loss = clipped_policy_loss(logp, old_logp, advantages, mask)
        loss.backward()
        return loss

    assert torch.isfinite(benchmark(loss_and_grad))


@pytest.mark.parametrize("rows,tokens,vocab", [(64, 40, 100), (4, 256, 32000)])
def test_gather_logprobs(benchmark, rows: int, tokens: int, vocab: int) -> None:
    benchmark.group = "logprobs"
    g = _generator()
    logits = torch.randn(rows, tokens, vocab, generator=g)
    chosen = torch.randint(0, vocab, (rows, tokens), generator=g)
    logprobs = benchmark(gather_logprobs, logits, chosen)
    torch.testing.assert_close(logprobs, torch.log_softmax(logits, -1).gather(-1, chosen.unsqueeze(-1)).squeeze(-1))


def test_hf_generate_64_prompts_16_tokens(benchmark, embedded_dir) -> None:
    """One generation call of the hf engine on the embedded model: 64 prompts x 16 new tokens."""
    from rlbench.catalog import load_problems
    from rlbench.config import TaskConfig
    from rlbench.models.embedded import load_pretrained_pair
    from rlbench.rollout import SamplingParams
    from rlbench.rollout.hf import HFEngine
    from rlbench.tasks import encode_prompts

    benchmark.group = "generate"
    model, tokenizer = load_pretrained_pair(embedded_dir)
    engine = HFEngine(model, tokenizer)
    prompts = encode_prompts(tokenizer, load_problems(TaskConfig(), "train", 64, 0))
    rollout = benchmark.pedantic(engine.generate, args=(prompts, SamplingParams(max_new_tokens=16)),
                                 kwargs={"seed": 0}, rounds=5, warmup_rounds=1)
    assert rollout.completion_ids.shape == (64, 16)


def test_grpo_zero_update_step(benchmark, make_run, no_probe) -> None:
    """One GRPO-Zero policy update (forward, clipped loss with KL, backward, AdamW) on one step's batch
    of the quickstart shape (64 completions, groups of 4, 40 new tokens) from the embedded model."""
    from rlbench.algorithms.base import Batch
    from rlbench.rewards import gold_correct
    from rlbench.tasks import encode_prompts

    benchmark.group = "update"
    run = make_run(no_probe)
    prompts = run.next_prompts()
    problems = [p for p in prompts for _ in range(run.group_size)]
    rollout = run.engine.generate(encode_prompts(run.tokenizer, prompts), run.group_size, run.sampling, seed=0)
    rewards, _ = run._score(rollout, problems)
    batch = Batch(rollout, problems, run.group_size, rewards, torch.tensor(gold_correct(rollout.texts, problems)),
                  rollout.logprobs)
    with torch.no_grad():
        batch.ref_logprobs = run.reference_logprobs(rollout)
    run.algorithm.compute_advantages(batch)
    stats = benchmark.pedantic(run._update_policy, args=(batch,), rounds=5, warmup_rounds=1)
    assert stats["learning/grad_norm"] > 0
