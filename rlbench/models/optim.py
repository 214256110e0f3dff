"""The optimizer every trained role uses: AdamW, fused where the device supports it; and the
minibatch loop of the stages that train a scorer (the reward model, the verifier)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def adamw(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0,
          betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW with the fused kernel (one pass over all tensors; CPU and CUDA) when available."""
    params = [p for p in params if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)


def train_in_batches(model: torch.nn.Module, optimizer: torch.optim.Optimizer, items: Sequence[T], steps: int,
                     batch_size: int, generator: torch.Generator, batch_loss: Callable[[list[T]], torch.Tensor],
                     max_grad_norm: float, on_step: Callable[[int, float], Any] | None = None) -> list[float]:
    """`steps` optimizer steps of `batch_loss` on `batch_size` of `items` each, in place: items are
    visited in shuffled passes (a fresh `torch.randperm` of them whenever fewer than a batch are left),
    gradients clipped to `max_grad_norm`. Returns each step's loss; `on_step(step, loss)` after each."""
    order: list[int] = []
    losses = []
    for step in range(steps):
        if len(order) < batch_size:
            order += torch.randperm(len(items), generator=generator).tolist()
        batch, order = [items[i] for i in order[:batch_size]], order[batch_size:]
        loss = batch_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, losses[-1])
    return losses
