"""Each algorithm's hyper-parameters: the defaults the docs give, and every bound as a suite sees it
(the value at the bound accepted or refused with the field named)."""

from __future__ import annotations

import dataclasses

import pytest

from rlbench.algorithms.params import GRPOParams, PPOParams, SFTMoreParams
from rlbench.config import AlgorithmConfig
from rlbench.config.checks import algorithm_params
from rlbench.errors import UserError

# The defaults, as DESIGN.md's measured starting points and README give them (GRPO-Zero: lr 1e-4, beta 0.04;
# PPO: lr 3e-5, 4 epochs x 2 minibatches, kl_coef 0.05; sft_more: 10% of the SFT stage's 4e-3 peak).
DEFAULTS = {
    GRPOParams: {"lr": 1e-4, "beta": 0.04, "clip_eps": 0.2, "num_iterations": 1, "num_minibatches": 1,
                 "agg": "token_mean", "scale": "group", "group_size": None, "max_grad_norm": 1.0, "weight_decay": 0.0},
    PPOParams: {"lr": 3e-5, "value_lr": 1e-4, "kl_coef": 0.05, "gamma": 1.0, "lam": 0.95, "ppo_epochs": 4,
                "num_minibatches": 2, "clip_eps": 0.2, "vf_clip": 0.2, "vf_coef": 0.1, "value_init": "auto",
                "whiten_advantages": True, "agg": "token_mean", "group_size": 1, "max_grad_norm": 1.0,
                "weight_decay": 0.0},
    SFTMoreParams: {"lr": 4e-4, "passes": 1, "num_minibatches": 1, "group_size": 1, "max_grad_norm": 1.0,
                    "weight_decay": 0.0},
}


@pytest.mark.parametrize("params_cls", list(DEFAULTS))
def test_defaults(params_cls):
    assert dataclasses.asdict(params_cls()) == DEFAULTS[params_cls]


# (algorithm, field, accepted values, refused values): each bound checked on both sides.
BOUNDS = [
    ("grpo", "lr", [1e-9, 0.999], [0, 1]),  # 0 < lr < 1
    ("grpo", "beta", [0], [-0.01]),  # >= 0
    ("grpo", "clip_eps", [0.01, 0.99], [0, 1]),
    ("grpo", "num_iterations", [1], [0]),  # >= 1
    ("grpo", "num_minibatches", [1], [0]),
    ("grpo", "group_size", [2], [1]),  # >= 2
    ("grpo", "max_grad_norm", [0.01], [0]),  # > 0
    ("grpo", "weight_decay", [0], [-0.01]),
    ("ppo", "lr", [1e-9, 0.999], [0, 1]),
    ("ppo", "value_lr", [1e-9, 0.999], [0, 1]),
    ("ppo", "kl_coef", [0], [-0.01]),
    ("ppo", "gamma", [0, 1], [-0.01, 1.01]),  # 0 <= gamma <= 1
    ("ppo", "lam", [0, 1], [-0.01, 1.01]),
    ("ppo", "ppo_epochs", [1], [0]),
    ("ppo", "num_minibatches", [1], [0]),
    ("ppo", "clip_eps", [0.01, 0.99], [0, 1]),
    ("ppo", "vf_clip", [0.01, 5.0], [0]),
    ("ppo", "vf_coef", [0.01, 5.0], [0]),
    ("ppo", "group_size", [1], [0]),
    ("ppo", "max_grad_norm", [0.01], [0]),
    ("ppo", "weight_decay", [0], [-0.01]),
    ("sft_more", "lr", [1e-9, 0.999], [0, 1]),
    ("sft_more", "passes", [1], [0]),
    ("sft_more", "num_minibatches", [1], [0]),
    ("sft_more", "group_size", [1], [0]),
    ("sft_more", "max_grad_norm", [0.01], [0]),
    ("sft_more", "weight_decay", [0], [-0.01]),
]


@pytest.mark.parametrize(("algorithm", "name", "accepted", "refused"), BOUNDS)
def test_bounds(algorithm, name, accepted, refused):
    for value in accepted:
        params = algorithm_params(AlgorithmConfig(name=algorithm, params={name: value}))
        assert getattr(params, name) == value
    for value in refused:
        with pytest.raises(UserError, match=f"{algorithm}.params.{name}: must be"):
            algorithm_params(AlgorithmConfig(name=algorithm, params={name: value}))


def test_every_numeric_bound_is_checked():
    checked = {(algorithm, name) for algorithm, name, _, _ in BOUNDS}
    for algorithm, params_cls in (("grpo", GRPOParams), ("ppo", PPOParams), ("sft_more", SFTMoreParams)):
        bounded = {f.name for f in dataclasses.fields(params_cls) if {"gt", "ge", "lt", "le"} & set(f.metadata)}
        assert bounded == {name for a, name in checked if a == algorithm}, algorithm


def test_grpo_samples_its_own_group_size_when_set_else_the_suites():
    assert GRPOParams(group_size=6).completions_per_prompt(default=4) == 6
    assert GRPOParams().completions_per_prompt(default=4) == 4
