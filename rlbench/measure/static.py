"""Static bytes of a model role: weights, gradients, optimizer state and buffers, from its tensors.

This is the part of a role's memory that can be computed without running anything; the probes in
memory.py measure the rest (activations, caches, allocator overhead). Every figure counts each
untyped storage once, so tied embeddings, shared tensors and views are not double-counted; a view
counts the whole storage it keeps alive. A storage is known by its identity (the storage object
every view of it shares), which fake and meta tensors have too (their data pointer is 0 for all of
them), and, when it has real memory, also by its device and data pointer (two storage objects over
the same memory count once). Categories are
counted in the order weights, master, gradients, optimizer, buffers, and a storage already counted
in an earlier category is not counted again, so `total` is the sum of the five.

Mixed precision: given the role's compute dtype (bf16 under `model.precision: bf16-mixed`), trained
parameters held in another dtype (float32) are the optimizer's master weights and are counted
under `master`, not `weights`: the role holds no persistent bf16 copy (autocast's copies belong to
the phases that make them).

Usage:

    static = role_static_bytes(policy, optimizer, compute_dtype=torch.bfloat16)
    static["weights"], static["master"], static["gradients"], static["optimizer"], static["total"]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The shard this rank holds, for a DTensor (FSDP2); the tensor itself otherwise. Read as the
    DTensor's own `_local_tensor`: `to_local()` of a sharded Parameter makes a view, an operator
    that a traced run dispatches for every parameter at every phase boundary (8% of a 7B trace)."""
    local = getattr(tensor, "_local_tensor", None)
    if isinstance(local, torch.Tensor):
        return local
    to_local = getattr(tensor, "to_local", None)
    if not callable(to_local):
        return tensor
    with torch.no_grad():
        return to_local()


def _storage_keys(storage: torch.UntypedStorage, device: torch.device) -> tuple[tuple[str, int], ...]:
    """The keys a storage is known by: its identity (`_cdata`, the address of the storage object all
    its views share: real, fake and meta alike) and, for real memory, the tensor's device and the
    data pointer. A fake tensor's storage is a meta storage (as a meta tensor's is): no memory, a
    data pointer of 0 for all of them, so its identity alone tells it apart."""
    keys: tuple[tuple[str, int], ...] = (("storage", storage._cdata),)
    if storage.device.type != "meta" and storage.data_ptr():
        keys += ((str(device), storage.data_ptr()),)
    return keys


def dedupe_bytes(tensors: Iterable[torch.Tensor], seen: set[tuple[str, int]] | None = None) -> int:
    """Bytes of the distinct storages behind `tensors`, each counted once.

    `seen` (updated in place) carries storages already counted elsewhere, which are skipped.
    """
    seen = set() if seen is None else seen
    total = 0
    for tensor in tensors:
        local = _local(tensor)
        storage = local.untyped_storage()
        keys = _storage_keys(storage, local.device)
        if any(key in seen for key in keys):
            continue
        seen.update(keys)
        total += storage.nbytes()
    return total


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    """Every tensor in optimizer.state, nested dicts, lists and tuples included.

    For AdamW that is exp_avg and exp_avg_sq (each the size of its parameter) and `step`, a 0-d
    float32 tensor per parameter (4 bytes each on CPU; on the parameter's device when capturable or
    fused): tiny, but counted, so the figure is what the optimizer really holds.
    """

    def walk(value: Any) -> Iterator[torch.Tensor]:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from walk(item)

    for state in optimizer.state.values():
        yield from walk(state)


def role_static_bytes(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
    compute_dtype: torch.dtype | None = None,
) -> dict[str, int]:
    """Static bytes of one role.

    Returns (all ints, bytes):
        weights: the model's parameters (except master weights).
        master: trainable parameters held in a dtype other than `compute_dtype` (float32 master
            weights of a bf16-mixed role); 0 when compute_dtype is None.
        gradients: the .grad tensors that exist now (0 before the first backward or after
            zero_grad(set_to_none=True)).
        gradients_expected: what gradients will take once they exist: the bytes of the trainable
            (requires_grad) parameters, one .grad per Parameter object (model.parameters() already
            yields a tied Parameter once). Not part of total.
        optimizer: every tensor in optimizer.state (0 before the first step: optimizers create
            their state lazily).
        buffers: the model's buffers (e.g. rotary inv_freq, norms' running stats).
        total: weights + master + gradients + optimizer + buffers.
    """
    seen: set[tuple[str, int]] = set()
    parameters = list(model.parameters())

    def is_master(p: torch.Tensor) -> bool:
        return compute_dtype is not None and p.requires_grad and p.dtype != compute_dtype

    weights = dedupe_bytes((p for p in parameters if not is_master(p)), seen)
    master = dedupe_bytes((p for p in parameters if is_master(p)), seen)
    gradients = dedupe_bytes((p.grad for p in parameters if p.grad is not None), seen)
    optimizer_bytes = dedupe_bytes(optimizer_state_tensors(optimizer), seen) if optimizer is not None else 0
    buffers = dedupe_bytes(model.buffers(), seen)
    return {
        "weights": weights,
        "master": master,
        "gradients": gradients,
        "gradients_expected": sum(
            _local(p).numel() * p.element_size() for p in parameters if p.requires_grad
        ),
        "optimizer": optimizer_bytes,
        "buffers": buffers,
        "total": weights + master + gradients + optimizer_bytes + buffers,
    }
