"""Padding helpers shared by every forward and engine (left-padded prompts and their positions), and
micro-batching: forward passes over a few rows at a time, with gradients accumulated to exactly
those of one pass over every row.

    micro = micro_batches(len(rows), size=2, group=4)      # [(row index, group size of its forward)]
    logprobs = in_micro_batches(rollout, micro, forward)   # forward(rollout_rows, group) per micro-batch
    outputs, stats = backward_in_micro_batches(rollout, micro, forward, loss_fn)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ids [N, P] and an attention mask [N, P]."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids, mask


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: 0 at each row's first real token."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


# ---- micro-batches ----------------------------------------------------------------------------


def micro_batches(n: int, size: int | None, group: int) -> list[tuple[torch.Tensor, int]]:
    """(rows, group size of their forward) of each micro-batch of `n` rows: consecutive whole groups,
    at most `size` rows; single rows sharing no prompt when `size` is smaller than a group; one
    micro-batch of every row when `size` is None."""
    if size is None or size >= n:
        return [(torch.arange(n), group)]
    rows, forward_group = ((size // group) * group, group) if size >= group else (size, 1)
    return [(torch.arange(start, min(start + rows, n)), forward_group) for start in range(0, n, rows)]


def in_micro_batches(rollout: Any, micro: list[tuple[torch.Tensor, int]], forward: Callable) -> Any:
    """`forward(rows of rollout, group)` for each micro-batch, outputs (a tensor or a tuple of tensors)
    concatenated along rows. `rollout` is anything with `completion_ids` and `select(index)`."""
    if len(micro) == 1:
        return forward(rollout, micro[0][1])
    outs = [forward(rollout.select(rows), group) for rows, group in micro]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


def backward_in_micro_batches(rollout: Any, micro: list[tuple[torch.Tensor, int]], forward: Callable,
                              loss_fn: Callable, backward: Callable[[torch.Tensor], None] | None = None
                              ) -> tuple[Any, dict[str, float]]:
    """Back-propagate `loss_fn(outputs)` (a loss over every row and its stats) through `forward`,
    whose output is a tensor or a tuple led by the differentiable one; `backward(loss)` (default
    `loss.backward()`) runs the loss's backward, e.g. scaled for a rank's share. Returns (the
    outputs, detached, and the stats).

    One micro-batch: forward, loss, backward. Several: every micro-batch runs without gradients,
    the loss's gradient with respect to the per-token outputs is taken, then each micro-batch runs
    again and back-propagates its rows of that gradient. The parameter gradients are those of one
    pass over all rows whatever the loss (its normalisation may span every row), for one extra
    forward pass; at most one micro-batch's activations exist at a time.
    """

    def lead(out: Any) -> torch.Tensor:
        return out[0] if isinstance(out, tuple) else out

    def detached(out: Any) -> Any:
        return tuple(o.detach() for o in out) if isinstance(out, tuple) else out.detach()

    backward = backward or torch.Tensor.backward
    if len(micro) == 1:
        outputs = forward(rollout, micro[0][1])
        loss, stats = loss_fn(outputs)
        backward(loss)
        return detached(outputs), stats
    with torch.no_grad():
        outputs = in_micro_batches(rollout, micro, forward)
    first = lead(outputs).requires_grad_()
    loss, stats = loss_fn((first, *outputs[1:]) if isinstance(outputs, tuple) else first)
    backward(loss)
    for rows, group in micro:
        lead(forward(rollout.select(rows), group)).backward(first.grad[rows])
    return detached(outputs), stats
