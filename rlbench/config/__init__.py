"""Suite files: YAML -> frozen dataclasses, with every error collected and named by field path.

A suite is one experiment: a model, a task, the algorithms to compare, one shared budget, and
how to roll out, evaluate and measure. Config is data: loading and validating a suite imports no
torch, transformers or implementation module.

    schema.py   the dataclasses, each field with its help and constraints (`f(...)`)
    typed.py    YAML values -> typed dataclasses, errors by field path; field help for --explain
    yaml_safe.py  the bounded YAML reader: size, nesting, alias expansion, duplicate keys
    loader.py   read the file, apply `--set` overrides, build, check: `load_suite`
    checks.py   checks that span fields or read the catalog (names, labels, group sizes)
    derived.py  settings derived from a suite, each computed once: precision mode, step shape

    suite = load_suite("suites/quickstart.yaml", overrides=["budget.steps=5"])
"""

from rlbench.config.checks import algorithm_params
from rlbench.config.derived import (
    SMOKE_EVAL_SIZE,
    SMOKE_STEPS,
    AlgorithmParams,
    StepShape,
    precision_mode,
    smoke_suite,
    step_shape,
)
from rlbench.config.loader import load_suite, resolved_dict
from rlbench.config.schema import (
    BUDGET_LIMITS,
    DTYPES,
    MACHINE_BOUND_LIMITS,
    PRECISION_MODES,
    REWARD_SOURCES,
    AlgorithmConfig,
    BudgetConfig,
    CheckConfig,
    DistributedConfig,
    EvalConfig,
    LoraConfig,
    ModelConfig,
    PrecisionMode,
    RewardModelConfig,
    RewardSource,
    RolloutConfig,
    SFTConfig,
    Suite,
    TaskConfig,
    f,
)
from rlbench.config.typed import field_help, parse_threshold

__all__ = [
    "BUDGET_LIMITS", "DTYPES", "MACHINE_BOUND_LIMITS", "PRECISION_MODES", "REWARD_SOURCES", "AlgorithmParams",
    "PrecisionMode", "RewardSource", "SMOKE_EVAL_SIZE", "SMOKE_STEPS", "smoke_suite", "StepShape", "precision_mode", "step_shape", "AlgorithmConfig", "BudgetConfig", "CheckConfig", "DistributedConfig", "EvalConfig", "LoraConfig", "ModelConfig",
    "RewardModelConfig", "RolloutConfig", "SFTConfig", "Suite", "TaskConfig", "algorithm_params", "f",
    "field_help", "load_suite", "parse_threshold", "resolved_dict",
]
