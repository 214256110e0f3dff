"""A fourth recipe, written against the `Algorithm` protocol alone, runs the real training loop.

REINFORCE with a batch-mean baseline: one completion per prompt, a sequence score (the rule reward
plus a small surprisal bonus, so that an untrained model's batch is not all ties), advantage
score - mean(score) for every token, loss -mean(A * logp). It holds only the policy and never reads anything that is not in the
protocol, so this test fails as soon as the loop starts reading something a recipe does not declare.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from rlbench.algorithms.base import Batch, UpdateSchedule
from rlbench.algorithms.losses import masked_mean
from rlbench.config import load_suite
from rlbench.measure.probing import NullProbe
from rlbench.models.embedded import build_embedded, save_pretrained_pair
from rlbench.train import Run

SUITE = """
name: protocol
model: {name: embedded, sft: {steps: 0}}
task: {name: synthetic, train_size: 200}
algorithms:
  - {name: grpo_zero, label: reinforce}
budget: {steps: 2}
rollout: {completions_per_step: 8, group_size: 4, max_new_tokens: 12}
eval: {size: 8}
"""


@dataclass(frozen=True)
class ReinforceParams:
    lr: float = 1e-3

    def completions_per_prompt(self, default: int) -> int:
        return 1  # one completion per prompt, whatever the suite's group size


class Reinforce:
    """REINFORCE with a batch-mean baseline (Williams 1992), no reference, no value model."""

    name: ClassVar[str] = "reinforce"
    completion_source: ClassVar[str] = "sampled"

    def __init__(self) -> None:
        self.params = ReinforceParams()
        self.reward_source = "rules"
        self.advantage_calls = 0

    def roles(self) -> tuple[str, ...]:
        return ("policy",)

    def schedule(self) -> UpdateSchedule:
        return UpdateSchedule(lr=self.params.lr, weight_decay=0.0, max_grad_norm=1.0, passes=2, num_minibatches=2)

    def value_init(self) -> None:
        return None

    def compute_advantages(self, batch: Batch) -> None:
        self.advantage_calls += 1
        surprisal = -masked_mean(batch.old_logprobs, batch.mask, dim=-1)
        score = batch.rewards + 0.1 * surprisal
        batch.advantages = score - score.mean()

    def policy_loss(self, logprobs: torch.Tensor, mb: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        loss = -masked_mean(mb.advantages[:, None] * logprobs, mb.mask)
        return loss, {"loss/policy": loss.item()}

    def value_loss(self, values: torch.Tensor, mb: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        raise AssertionError("no value model")



def test_a_recipe_built_from_the_protocol_runs_two_steps_of_the_loop(tmp_path):
    (tmp_path / "suite.yaml").write_text(SUITE)
    suite = load_suite(tmp_path / "suite.yaml")
    model, tokenizer = build_embedded(seed=0)
    policy_dir = save_pretrained_pair(model, tokenizer, tmp_path / "policy")
    recipe = Reinforce()
    run = Run.build(suite, suite.algorithms[0], 0, policy_dir, None, NullProbe(), algorithm=recipe)
    before = [p.detach().clone() for p in run.policy.parameters()]
    steps = [run.step() for _ in range(2)]

    assert run.roles == ("policy",) and run.reference is None and run.value_model is None
    assert recipe.advantage_calls == 2
    assert [s["completions"] for s in steps] == [8, 16]  # one completion per prompt: 8 prompts a step
    assert run.budget.prompts == 16
    assert run.budget.trained_tokens == 2 * run.budget.tokens  # passes=2 from the schedule
    assert run.optimizer.param_groups[0]["lr"] == 1e-3
    assert all("loss/policy" in s and "learning/grad_norm" in s for s in steps)
    assert any(not torch.equal(a, b) for a, b in zip(before, run.policy.parameters()))
