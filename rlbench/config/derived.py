"""Settings derived from a suite, each computed here and nowhere else (torch-free).

    precision_mode(suite.model)             which PRECISION_MODES row `model.precision` means
                                            (`rlbench.models.precision.resolve_precision` adds the
                                            torch dtypes; a run resolves it once and holds it)
    step_shape(params, suite.rollout)       completions per prompt and prompts per step of an
                                            algorithm, from the group-size rule on its parameters
    smoke_suite(suite)                      the suite as `rlbench run --smoke` runs it: SMOKE_STEPS
                                            RL steps and SMOKE_EVAL_SIZE held-out problems

The budget's limit names are `schema.BUDGET_LIMITS` (the fields of `BudgetConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from rlbench.config.schema import PRECISION_MODES, ModelConfig, PrecisionMode, RolloutConfig, Suite

SMOKE_STEPS = 2
"""RL steps of each run of a smoke run (`rlbench run --smoke`)."""
SMOKE_EVAL_SIZE = 32
"""Held-out problems a smoke run evaluates on (before and after RL)."""


def precision_mode(cfg: ModelConfig) -> PrecisionMode:
    """The precision a model config asks for; `auto` picks the mode marked auto for its dtype."""
    if cfg.precision == "auto":
        return next(mode for mode in PRECISION_MODES.values() if mode.auto and mode.dtype == cfg.dtype)
    return PRECISION_MODES[cfg.precision]


class AlgorithmParams(Protocol):
    """What is read of an algorithm's hyper-parameter dataclass besides its fields: the group-size rule."""

    def completions_per_prompt(self, default: int) -> int:
        """Completions sampled per prompt (the group size); `default` is the suite's rollout.group_size."""
        ...


@dataclass(frozen=True)
class StepShape:
    """How one step of an algorithm splits its `rollout.completions_per_step`."""

    group_size: int  # completions per prompt
    prompts_per_step: int  # completions_per_step // group_size (validated to divide)


def step_shape(params: AlgorithmParams, rollout: RolloutConfig) -> StepShape:
    """The step shape of an algorithm with these parameters under the suite's rollout settings."""
    group = params.completions_per_prompt(rollout.group_size)
    return StepShape(group, rollout.completions_per_step // group)


def smoke_suite(suite: Suite) -> Suite:
    """The suite as `rlbench run --smoke` runs it: every run stops after SMOKE_STEPS steps (or
    earlier at another of the budget's limits) and is evaluated on SMOKE_EVAL_SIZE problems (or
    the suite's eval.size if smaller). Everything else, the cached stages' settings included, stays
    as written: a smoke run warms the caches the full run reads."""
    steps = min(suite.budget.steps or SMOKE_STEPS, SMOKE_STEPS)
    return replace(suite, budget=replace(suite.budget, steps=steps),
                   eval=replace(suite.eval, size=min(suite.eval.size, SMOKE_EVAL_SIZE)))
