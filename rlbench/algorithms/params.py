"""Each algorithm's hyper-parameters, as data: what a suite's `algorithms[].params` may set.

Torch-free, so that loading and validating a suite (and `rlbench ls --params`) imports no model
code. Fields use the suite schema's `f(...)`: a one-line help and constraints. Each dataclass also
carries its group-size rule, `completions_per_prompt(default)` (`rlbench.config.AlgorithmParams`):
the suite checks, the loop and the estimator all read the group size (and from it the prompts per
step, `rlbench.config.step_shape`) there.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlbench.config.schema import f

AGG_MODES = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
SCALE_MODES = ("group", "batch", "none")


@dataclass(frozen=True)
class GRPOParams:
    lr: float = f(1e-4, "AdamW learning rate of the policy", gt=0, lt=1)
    beta: float = f(0.04, "weight of the KL penalty to the reference (0: no reference model is loaded)", ge=0)
    clip_eps: float = f(0.2, "PPO-style ratio clip epsilon", gt=0, lt=1)
    num_iterations: int = f(1, "optimisation passes over each batch (GRPO's mu)", ge=1)
    num_minibatches: int = f(1, "optimizer steps per pass", ge=1)
    agg: str = f("token_mean", "loss aggregation over tokens", choices=AGG_MODES)
    scale: str = f("group", "advantage scaling: group std, batch std, or none (Dr. GRPO)", choices=SCALE_MODES)
    group_size: int | None = f(None, "completions per prompt (default: rollout.group_size)", ge=2)
    max_grad_norm: float = f(1.0, "gradient clipping norm", gt=0)
    weight_decay: float = f(0.0, "AdamW weight decay", ge=0)

    def completions_per_prompt(self, default: int) -> int:
        """Its own group_size when set, else the suite's rollout.group_size."""
        return self.group_size or default


@dataclass(frozen=True)
class PPOParams:
    lr: float = f(3e-5, "AdamW learning rate of the policy", gt=0, lt=1)
    value_lr: float = f(1e-4, "AdamW learning rate of the value model", gt=0, lt=1)
    kl_coef: float = f(0.05, "weight of the per-token KL penalty folded into the reward", ge=0)
    gamma: float = f(1.0, "discount over completion tokens", ge=0, le=1)
    lam: float = f(0.95, "GAE lambda", ge=0, le=1)
    ppo_epochs: int = f(4, "passes over each batch", ge=1)
    num_minibatches: int = f(2, "minibatches per pass (one optimizer step each)", ge=1)
    clip_eps: float = f(0.2, "policy ratio clip epsilon", gt=0, lt=1)
    vf_clip: float = f(0.2, "value clip range around the old values", gt=0)
    vf_coef: float = f(0.1, "weight of the value loss", gt=0)
    value_init: str = f("auto", "initialise the value model from the reward model (InstructGPT) or the SFT policy "
                        "with a fresh head; auto: the reward model when the run holds one", choices=("auto", "reward", "policy"))
    whiten_advantages: bool = f(True, "whiten advantages over the batch")
    agg: str = f("token_mean", "policy loss aggregation over tokens", choices=AGG_MODES)
    group_size: int = f(1, "completions per prompt", ge=1)
    max_grad_norm: float = f(1.0, "gradient clipping norm", gt=0)
    weight_decay: float = f(0.0, "AdamW weight decay", ge=0)

    def completions_per_prompt(self, default: int) -> int:
        """Its own group_size (1 by default: PPO samples one completion per prompt), whatever the suite's."""
        return self.group_size


@dataclass(frozen=True)
class SFTMoreParams:
    lr: float = f(4e-4, "AdamW learning rate of the policy (the default is where the SFT stage's cosine schedule "
                        "ends: 10% of its 4e-3 peak)", gt=0, lt=1)
    passes: int = f(1, "optimisation passes over each batch of demonstrations", ge=1)
    num_minibatches: int = f(1, "optimizer steps per pass", ge=1)
    group_size: int = f(1, "sequences per problem in a step (1: every sequence a different problem)", ge=1)
    max_grad_norm: float = f(1.0, "gradient clipping norm", gt=0)
    weight_decay: float = f(0.0, "AdamW weight decay", ge=0)

    def completions_per_prompt(self, default: int) -> int:
        """Its own group_size, whatever the suite's."""
        return self.group_size
