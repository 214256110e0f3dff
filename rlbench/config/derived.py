"""Settings derived from a suite, each computed here and nowhere else (torch-free).

    precision_mode(suite.model)             which PRECISION_MODES row `model.precision` means
                                            (`rlbench.models.precision.resolve_precision` adds the
                                            torch dtypes; a run resolves it once and holds it)
    step_shape(params, suite.rollout)       completions per prompt and prompts per step of an
                                            algorithm, from the group-size rule on its parameters

The budget's limit names are `schema.BUDGET_LIMITS` (the fields of `BudgetConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from rlbench.config.schema import PRECISION_MODES, ModelConfig, PrecisionMode, RolloutConfig


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
