"""The budget: consumption lines up with the limits field by field, the first limit reached (in
`BUDGET_LIMITS` order) stops a run, and a step's counts survive the sum over ranks."""

from __future__ import annotations

from dataclasses import astuple, fields

from rlbench.config import BUDGET_LIMITS, BudgetConfig
from rlbench.measure.budget import Budget, StepCounts


def counts(completions: int = 8, tokens: int = 40) -> StepCounts:
    return StepCounts(prompts=2, completions=completions, tokens=tokens, sequence_tokens=100,
                      flops_by_phase={"generate": 1_000, "update": 3_000})


def test_every_limit_has_a_consumption() -> None:
    assert BUDGET_LIMITS == tuple(f.name for f in fields(BudgetConfig))
    budget = Budget(BudgetConfig())
    budget.add(counts(), 1.5, passes=2)
    used = budget.used()
    assert None not in astuple(used)  # a new limit without its consumption would never stop a run
    assert (used.steps, used.completions, used.tokens, used.wall_seconds, used.flops) == (1, 8, 40, 1.5, 4_000)
    assert budget.trained_tokens == 80 and budget.prompts == 2 and budget.sequence_tokens == 100


def test_the_first_limit_reached_stops_the_run() -> None:
    budget = Budget(BudgetConfig(completions=16, flops=8_000))
    budget.add(counts(), 0.1, passes=1)
    assert budget.exhausted() is None and budget.fraction() == 0.5  # 8 of 16 completions, 4,000 of 8,000 FLOPs
    budget.add(counts(), 0.1, passes=1)
    assert budget.exhausted() == "completions"  # both reached at once: completions comes first
    assert budget.fraction() == 1.0
    assert budget.consumed()["flops_by_phase"] == {"generate": 2_000, "update": 6_000}


def test_counts_survive_a_sum_over_ranks() -> None:
    step = counts()
    summed = step.with_values([2 * v for v in step.values()])  # two ranks with the same counts
    assert summed == StepCounts(4, 16, 80, 200, {"generate": 2_000, "update": 6_000})
