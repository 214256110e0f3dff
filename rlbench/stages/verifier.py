"""The reward model stage's second kind (`model.reward_model.kind: verifier`): a scorer of the final
answer's correctness, trained with binary cross-entropy on every labelled completion (its logit is
the reward), and the figures that compare it with the Bradley-Terry kind.

Measured on the embedded model at the N=1000 plateau: a verifier separates right from wrong across
prompts (AUC 0.86) but barely within a prompt (pairwise 0.54, against Bradley-Terry's 0.66): it
learns which prompts the policy gets right, not which of two completions of one prompt is right.
GRPO's advantage compares completions within a group, so the report's headline figure for either
kind is held-out within-prompt pairwise accuracy; AUC and classification accuracy sit beside it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlbench.algorithms.losses import verifier_loss
from rlbench.config import RewardModelConfig
from rlbench.models.heads import ScalarHeadModel
from rlbench.models.optim import adamw, train_in_batches

MAX_GRAD_NORM = 1.0


def train_verifier(model: ScalarHeadModel, samples: list, indices: list[int], cfg: RewardModelConfig,
                   pack: Callable[[list], tuple[torch.Tensor, torch.Tensor]], seed: int,
                   on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """`cfg.steps` AdamW steps of `verifier_loss` on `cfg.batch_size` samples each (the samples at
    `indices`, visited in shuffled passes), in place; `pack(samples)` lays them out as the RL loop
    does (`reward_model.pack_sequences`). Returns the loss of each step."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = adamw(model.parameters(), lr=cfg.lr)
    model.train()

    def batch_loss(batch: list) -> torch.Tensor:
        labels = torch.tensor([float(s.correct) for s in batch])
        return verifier_loss(model.score(*pack(batch)).float(), labels)

    return train_in_batches(model, optimizer, [samples[i] for i in indices], cfg.steps, cfg.batch_size, generator,
                            batch_loss, MAX_GRAD_NORM, on_step)


def roc_auc(scores: list[float], correct: list[bool]) -> float:
    """Probability that a random correct completion scores above a random incorrect one (ties
    count half): the area under the ROC curve; nan without both kinds."""
    right = [s for s, c in zip(scores, correct) if c]
    wrong = [s for s, c in zip(scores, correct) if not c]
    if not right or not wrong:
        return float("nan")
    wins = sum((r > w) + 0.5 * (r == w) for r in right for w in wrong)
    return wins / (len(right) * len(wrong))


def classification_accuracy(scores: list[float], correct: list[bool]) -> float:
    """Fraction of completions whose logit has the sign of the checker's verdict (logit > 0: correct)."""
    return sum((s > 0) == c for s, c in zip(scores, correct)) / len(scores) if scores else float("nan")
