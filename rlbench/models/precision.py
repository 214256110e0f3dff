"""Numeric precision of each role: which dtype its parameters are held in and which it computes in.

    fp32        every role in float32.
    bf16-mixed  trained roles (policy, value) hold float32 parameters (the master weights) and
                AdamW keeps float32 moments: 16 bytes per parameter, as verl and TRL with
                accelerate/DeepSpeed deploy. Every phase computes under `torch.autocast(bf16)`,
                which makes bf16 copies of the weights as it goes (the copies are transient: they
                belong to the phase, not to the role). Frozen roles (reference, reward) are held
                in bf16. The lean decoder casts the policy's linear weights to bf16 once per
                `generate` call instead of at every token.
    bf16-pure   every role in bf16, AdamW's moments too (8 bytes per trained parameter): updates
                smaller than half a bf16 step of a weight are rounded away (at lr 1e-6 most are).
    auto        fp32 for `model.dtype: float32`, bf16-mixed for bfloat16; float16 stays pure.

Usage:

    precision = resolve_precision(suite.model)
    dtype = parameter_dtype(suite.model, trained=True)     # what from_pretrained loads
    with compute_context(precision, device): ...           # autocast for bf16-mixed
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from rlbench.config import ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
AUTO = {"float32": "fp32", "bfloat16": "bf16-mixed", "float16": "fp16-pure"}


def resolve_precision(cfg: ModelConfig) -> str:
    """fp32, bf16-mixed, bf16-pure (or fp16-pure for a float16 model with precision auto)."""
    return AUTO[cfg.dtype] if cfg.precision == "auto" else cfg.precision


def parameter_dtype(cfg: ModelConfig, trained: bool) -> torch.dtype:
    """The dtype a role's parameters are held in: float32 masters for trained roles under bf16-mixed."""
    if resolve_precision(cfg) == "bf16-mixed" and trained:
        return torch.float32
    return DTYPES[cfg.dtype]


def compute_dtype(cfg: ModelConfig) -> torch.dtype | None:
    """The autocast dtype of every phase (bf16 under bf16-mixed), None when parameters compute as held."""
    return torch.bfloat16 if resolve_precision(cfg) == "bf16-mixed" else None


def compute_context(cfg: ModelConfig, device: torch.device | str) -> AbstractContextManager:
    """`torch.autocast` in the compute dtype on `device`, or nothing."""
    dtype = compute_dtype(cfg)
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
