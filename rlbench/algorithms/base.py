"""What the shared training loop needs from an algorithm, and the batch it hands over.

The loop (`rlbench/train/run.py`) is the same for every recipe: sample (or take the gold
demonstrations, for a supervised recipe), score, reference log-probs, values, advantages, update.
An algorithm says which roles it holds, where its completions and rewards come from, how it turns
rewards into advantages, and which losses it minimises; its parameters say how many completions it
samples per prompt (`AlgorithmParams.completions_per_prompt`). The math lives in `advantages.py` and
`losses.py`; an algorithm only wires it up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol

import torch

from rlbench.config import AlgorithmParams, RewardSource
from rlbench.rollout import Rollout
from rlbench.tasks import Problem

CompletionSource = Literal["sampled", "gold"]
"""Where a step's completions come from: "sampled" by the policy (RL), or the task's "gold"
demonstrations, with nothing generated (supervised recipes such as sft_more)."""
ValueInit = Literal["reward", "policy"]
"""Where a value model starts: the reward model's weights, or the SFT policy with a fresh head."""

@dataclass
class Batch:
    """One step's experience. Every per-completion tensor has N = prompts x group_size rows."""

    rollout: Rollout
    problems: list[Problem]  # one per completion (a prompt's group rows are adjacent)
    group_size: int
    rewards: torch.Tensor  # [N] the reward being optimised (rules, reward model, or both)
    gold: torch.Tensor  # [N] the answer checker's verdict, logged next to the proxy
    old_logprobs: torch.Tensor  # [N, T] log-probs under the policy that sampled
    ref_logprobs: torch.Tensor | None = None  # [N, T] under the frozen reference
    values: torch.Tensor | None = None  # [N, T] value estimates before the update
    advantages: torch.Tensor | None = None  # [N] or [N, T]
    returns: torch.Tensor | None = None  # [N, T] value targets
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def mask(self) -> torch.Tensor:
        return self.rollout.completion_mask

    def __len__(self) -> int:
        return self.rollout.completion_ids.shape[0]

    def select(self, index: torch.Tensor, group_size: int = 1) -> Batch:
        """Rows `index` (a minibatch). Pass group_size when `index` keeps whole groups together
        in order (rows i*G .. i*G+G-1 one prompt's completions), so prompts can be shared."""

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[index]

        return Batch(
            self.rollout.select(index), [self.problems[i] for i in index.tolist()], group_size, self.rewards[index],
            self.gold[index], self.old_logprobs[index], pick(self.ref_logprobs), pick(self.values),
            pick(self.advantages), pick(self.returns),
        )


@dataclass(frozen=True)
class UpdateSchedule:
    """How the loop optimises on each batch, as a recipe sets it (from its params)."""

    lr: float  # AdamW learning rate of the policy
    weight_decay: float  # AdamW weight decay (policy and value)
    max_grad_norm: float  # gradient clipping norm (policy and value)
    passes: int = 1  # optimisation passes over each batch (PPO's epochs, GRPO's mu)
    num_minibatches: int = 1  # optimizer steps per pass, each on whole groups
    value_lr: float | None = None  # AdamW learning rate of the value model; None when there is none
    loss_agg: str = "token_mean"  # how policy_loss reduces tokens (losses.AGG_MODES): ranks weight their share by it


class Algorithm(Protocol):
    """A recipe plugged into the shared loop. The loop reads nothing else of it: a recipe that
    implements these methods runs (tests/test_protocol.py builds one from this protocol alone)."""

    name: ClassVar[str]
    params: AlgorithmParams  # its hyper-parameters: the loop reads their group-size rule, the rest through schedule()
    reward_source: RewardSource
    # "sampled": the policy generates the step's completions (RL); "gold": the task's demonstrations
    # are the completions and nothing is generated (supervised recipes such as sft_more, the control
    # arm that spends the same budget on more SFT). The rest of the loop is the same for both.
    completion_source: CompletionSource

    def roles(self) -> tuple[str, ...]:
        """Model roles held in memory, e.g. ("policy", "reference"); "value" means a trained value model."""
        ...

    def schedule(self) -> UpdateSchedule:
        """Optimiser settings, passes and minibatches of the update phases."""
        ...

    def value_init(self) -> ValueInit | None:
        """Where the value model starts: "reward" (the reward model's weights) or "policy" (the SFT
        model with a fresh head); None for recipes without a value role."""
        ...

    def compute_advantages(self, batch: Batch) -> None:
        """Fill batch.advantages (and batch.returns where a value model is trained)."""
        ...

    def policy_loss(self, logprobs: torch.Tensor, minibatch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The policy's loss on a minibatch given its current per-token log-probs."""
        ...

    def value_loss(self, values: torch.Tensor, minibatch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The value model's loss (algorithms with a value role only)."""
        ...


def uses_reward_model(algorithm: Algorithm) -> bool:
    """Whether a run of `algorithm` needs the reward-model stage: it holds a reward role, or its
    value model starts from the reward model's weights."""
    return "reward" in algorithm.roles() or algorithm.value_init() == "reward"
