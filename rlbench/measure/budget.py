"""A run's consumption of the suite's budget, and which limit stops it.

Every step adds its `StepCounts` (prompts, completions, generated and processed tokens, model FLOPs
by phase, and the least bytes each phase reads (`measure/roofline.py`): summed over ranks in a
distributed run) and its seconds. `used()` gives the consumption in
the limits' own shape (a `BudgetConfig`), so limits and consumption line up field by field;
`exhausted()` names the first limit reached, in `BUDGET_LIMITS` order.

    budget = Budget(suite.budget)
    budget.add(counts, seconds, passes)
    budget.exhausted()       # "completions", or None while every limit has room
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, field
from typing import Any

from rlbench.config import BUDGET_LIMITS, BudgetConfig


@dataclass(frozen=True)
class StepCounts:
    """What one step consumed."""

    prompts: int
    completions: int
    tokens: int  # generated tokens (EOS included)
    sequence_tokens: int  # prompt + completion positions processed
    flops_by_phase: dict[str, int]  # model FLOPs of each phase that ran, exact integers
    bytes_by_phase: dict[str, int] = field(default_factory=dict)  # least bytes each phase reads (its floor)

    def values(self) -> list[int]:
        """Every count in a fixed order (what ranks sum)."""
        return [self.prompts, self.completions, self.tokens, self.sequence_tokens, *self.flops_by_phase.values(),
                *self.bytes_by_phase.values()]

    def with_values(self, values: list[int]) -> StepCounts:
        """These counts replaced by `values` (in `values()` order), e.g. their sums over ranks."""
        prompts, completions, tokens, sequence_tokens, *rest = values
        flops, nbytes = rest[:len(self.flops_by_phase)], rest[len(self.flops_by_phase):]
        return StepCounts(prompts, completions, tokens, sequence_tokens, dict(zip(self.flops_by_phase, flops)),
                          dict(zip(self.bytes_by_phase, nbytes)))


@dataclass
class Budget:
    """Consumption against the suite's limits; `exhausted()` names the first limit reached."""

    limits: BudgetConfig
    steps: int = 0
    completions: int = 0
    prompts: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    sequence_tokens: int = 0  # prompt + completion positions processed
    seconds: float = 0.0
    flops_by_phase: dict[str, int] = field(default_factory=dict)  # model FLOPs, exact integers
    bytes_by_phase: dict[str, int] = field(default_factory=dict)  # least bytes read (measure/roofline.py)

    @property
    def flops(self) -> int:
        return sum(self.flops_by_phase.values())

    def add(self, counts: StepCounts, seconds: float, passes: int) -> None:
        """One more step: its counts, its seconds, and its generated tokens trained `passes` times."""
        self.steps += 1
        self.prompts += counts.prompts
        self.completions += counts.completions
        self.tokens += counts.tokens
        self.sequence_tokens += counts.sequence_tokens
        for phase, flops in counts.flops_by_phase.items():
            self.flops_by_phase[phase] = self.flops_by_phase.get(phase, 0) + flops
        for phase, nbytes in counts.bytes_by_phase.items():
            self.bytes_by_phase[phase] = self.bytes_by_phase.get(phase, 0) + nbytes
        self.trained_tokens += counts.tokens * passes
        self.seconds += seconds

    def used(self) -> BudgetConfig:
        """Consumption in each limit's unit, shaped like the limits."""
        return BudgetConfig(steps=self.steps, completions=self.completions, tokens=self.tokens,
                            wall_seconds=self.seconds, flops=self.flops)

    def exhausted(self) -> str | None:
        for name, used, limit in zip(BUDGET_LIMITS, astuple(self.used()), astuple(self.limits)):
            if limit is not None and used >= limit:
                return name
        return None

    def fraction(self) -> float:
        """How much of the tightest limit is used, 0..1."""
        fractions = [used / limit for used, limit in zip(astuple(self.used()), astuple(self.limits)) if limit]
        return min(1.0, max(fractions)) if fractions else 0.0

    def consumed(self) -> dict[str, Any]:
        return {"steps": self.steps, "prompts": self.prompts, "completions": self.completions,
                "tokens_generated": self.tokens, "tokens_trained": self.trained_tokens,
                "wall_seconds": round(self.seconds, 3), "flops": self.flops,
                "flops_by_phase": dict(self.flops_by_phase),
                **({"bytes_by_phase": dict(self.bytes_by_phase)} if self.bytes_by_phase else {})}
