"""Numeric precision of each role: which dtype its parameters are held in and which it computes in.

    fp32        every role in float32.
    bf16-mixed  trained roles (policy, value) hold float32 parameters (the master weights) and
                AdamW keeps float32 moments: 16 bytes per parameter, as verl and TRL with
                accelerate/DeepSpeed deploy. Every phase computes under `torch.autocast(bf16)`,
                which makes bf16 copies of the weights as it goes (the copies are transient: they
                belong to the phase, not to the role). Autocast's cast cache is off: with it, a
                weight's bf16 copy lives until the phase ends, so a phase of several optimizer
                steps (PPO's minibatches) would compute every step after the first with the
                weights of the first, and FSDP2 would keep every layer's copy after resharding
                it (and, its gradients reaching the layer after its post-backward hook, leave
                them unreduced). Frozen roles (reference, reward) are held
                in bf16. The lean decoder casts the policy's linear weights to bf16 once per
                `generate` call instead of at every token.
    bf16-pure   every role in bf16, AdamW's moments too (8 bytes per trained parameter): updates
                smaller than half a bf16 step of a weight are rounded away (at lr 1e-6 most are).
    auto        fp32 for `model.dtype: float32`, bf16-mixed for bfloat16; float16 stays pure.

The modes are one table, `rlbench.config.PRECISION_MODES` (torch-free, so the suite checks read
it too); this module adds the torch dtypes. A run resolves its precision once and holds it:

    precision = resolve_precision(suite.model)
    precision.parameter_dtype(trained=True)     # what from_pretrained loads a trained role in
    with precision.context(device): ...         # autocast for bf16-mixed
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from rlbench.config import ModelConfig, precision_mode

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""`model.dtype` names and the torch dtypes they stand for."""


@dataclass(frozen=True)
class Precision:
    """A suite's precision, resolved (`resolve_precision`): the dtypes every role and phase use."""

    name: str  # fp32, bf16-mixed, bf16-pure, or fp16-pure (a float16 model with precision auto)
    dtype: torch.dtype  # model.dtype: the parameters of frozen roles (and of trained ones unless mixed)
    compute_dtype: torch.dtype | None  # the autocast dtype of every phase (bf16 under bf16-mixed), None: as held

    def parameter_dtype(self, trained: bool) -> torch.dtype:
        """The dtype a role's parameters are held in: float32 masters for trained roles under mixed precision."""
        return torch.float32 if trained and self.compute_dtype is not None else self.dtype

    def context(self, device: torch.device | str) -> AbstractContextManager:
        """`torch.autocast` in the compute dtype on `device`, without its cast cache (see the module
        docstring), or nothing."""
        if self.compute_dtype is None:
            return nullcontext()
        return torch.autocast(torch.device(device).type, dtype=self.compute_dtype, cache_enabled=False)


def resolve_precision(cfg: ModelConfig) -> Precision:
    """The precision `model.precision` and `model.dtype` ask for (validated to agree by the suite checks)."""
    mode = precision_mode(cfg)
    dtype = DTYPES[mode.dtype]
    return Precision(mode.name, dtype, dtype if mode.mixed else None)
