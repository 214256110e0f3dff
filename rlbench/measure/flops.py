"""Model FLOPs per token, MFU, and the peak FLOP/s that MFU divides by.

MFU (model FLOPs utilization) is defined in PaLM (Chowdhery et al. 2022, appendix B,
https://arxiv.org/abs/2204.02311): the FLOPs the model's math needs per second, over the device's
peak FLOP/s. Recomputation and other work the hardware does on top are not model FLOPs.

Per token, a dense decoder-only transformer with N matmul parameters, L layers, hidden size d
(= heads x head dim) and T attended positions needs (PaLM appendix B):

    forward:                  2N + 4LdT    (2 FLOPs per multiply-add; per layer QK^T and
                                            attention-weights x V each cost 2dT)
    trained (fwd + bwd):      6N + 12LdT   (the backward pass costs twice the forward)

Conventions, as in PaLM and nanoGPT: N excludes input embedding tables (a lookup does no
arithmetic) but includes the output projection (the LM head), counted once even when it is tied
to the input embedding; `flop_params` computes it. The attention term ignores the causal mask
(it counts all T positions, as PaLM does), and T is the number of positions a token attends to:
the sequence length for a training sequence; for tokens generated with a KV cache, the mean
context length (prompt + half the completion).

Run accounting (`sequence_flops`, used by budget.flops and by MFU) counts every pass over a
sequence of T real tokens (prompt + completion, padding excluded) as T tokens each attending to
T positions, each role with its own shape (`flop_shape`): a forward for generation, the reward
model's score, the reference's and the value model's estimates; a trained pass for each
optimisation pass of the policy and the value model. Integer arithmetic throughout: the count is
exact and the same on every machine.

Peaks: `gpu_peak_flops` looks the device up in a table of datasheet figures (dense, no
sparsity); `cpu_peak_flops` measures a large fp32 matmul once per machine and caches the result.
"""

from __future__ import annotations

import json
import os
import platform
import re
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

CPU_PEAK_CACHE_FILE = "cpu_peak_flops.json"


def model_flops_per_token(n_params: int, n_layers: int, hidden: int, seq_len: float, training: bool) -> float:
    """PaLM's model FLOPs per token: 2N + 4LdT forward, 6N + 12LdT trained (see the module docstring).

    Args:
        n_params: N, parameters each token multiplies (flop_params(model)).
        n_layers: L, transformer layers.
        hidden: d, attention width (heads x head dim; the hidden size in Llama/Qwen).
        seq_len: T, positions each token attends to.
        training: True for a forward and backward pass, False for a forward pass.
    Returns:
        FLOPs per token.
    """
    forward = 2 * n_params + 4 * n_layers * hidden * seq_len
    return 3 * forward if training else forward


def flop_params(model: Any) -> int:
    """N for model_flops_per_token: all parameters but embedding tables, plus a tied LM head once.

    An nn.Embedding weight is excluded unless an nn.Linear uses the same Parameter (a tied output
    projection, a real matmul per token); each Parameter object is counted once.
    """
    import torch

    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    embedding_only = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, torch.nn.Embedding) and id(m.weight) not in linear_weights
    }
    return sum(p.numel() for p in model.parameters() if id(p) not in embedding_only)


@dataclass(frozen=True)
class FlopShape:
    """What model_flops_per_token needs of a model: N, L and d."""

    n_params: int
    n_layers: int
    hidden: int


def flop_shape(model: Any) -> FlopShape:
    """N (flop_params), layers and hidden size of a causal LM or a scalar-head model (its backbone's config)."""
    config = getattr(model, "config", None) or model.backbone.config
    return FlopShape(flop_params(model), config.num_hidden_layers, config.hidden_size)


def sequence_flops(shape: FlopShape, lengths: Iterable[int], training: bool) -> int:
    """Model FLOPs of one pass over whole sequences of these lengths (real tokens each): every one
    of a sequence's T tokens attends to T positions. Exact integers for integer shapes and lengths."""
    return sum(t * model_flops_per_token(shape.n_params, shape.n_layers, shape.hidden, t, training)
               for t in lengths)


def mfu(flops: float, seconds: float, peak_flops: float) -> float:
    """Model FLOPs utilization: flops / seconds / peak_flops (a fraction, 1.0 = the device's peak)."""
    assert seconds > 0, f"seconds must be > 0, got {seconds}"
    assert peak_flops > 0, f"peak_flops must be > 0, got {peak_flops}"
    return flops / seconds / peak_flops


# ----------------------------------------------------------------------------------------- CPU


def cpu_model_name() -> str:
    """The CPU's model name ("model name" in /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def measure_matmul_flops(n: int = 2048, reps: int = 3) -> float:
    """FLOP/s of the fastest of `reps` fp32 n x n matmuls (2n^3 FLOPs each), after one warm-up."""
    import torch

    a = torch.randn(n, n, dtype=torch.float32)
    b = torch.randn(n, n, dtype=torch.float32)
    torch.mm(a, b)  # warm-up: thread pool start, first-touch of the output
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def cpu_peak_flops(cache_dir: str | os.PathLike[str], n: int = 2048, reps: int = 3) -> float:
    """Peak fp32 FLOP/s of this CPU, measured once with a matmul and cached in cache_dir.

    The cache (cpu_peak_flops.json) is keyed by CPU model, torch threads, torch version and matrix
    size, so a different machine, thread count or BLAS measures again. On a shared machine the
    figure drops while other processes run; best-of-reps limits that.
    """
    import torch

    key = f"{cpu_model_name()} | threads {torch.get_num_threads()} | torch {torch.__version__} | fp32 matmul {n}"
    path = Path(cache_dir) / CPU_PEAK_CACHE_FILE
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return float(cache[key]["flops_per_s"])
    flops_per_s = measure_matmul_flops(n, reps)
    cache[key] = {
        "flops_per_s": flops_per_s,
        "matmul_size": n,
        "reps": reps,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(cache, tmp, indent=2)
    os.replace(tmp.name, path)  # atomic: a reader never sees half a file
    return flops_per_s


# ----------------------------------------------------------------------------------------- GPU

_T = 1e12
# Dense (no sparsity) peak FLOP/s from NVIDIA's datasheets, which print tensor-core figures with
# 2:4 sparsity (twice these). bf16/fp16: tensor cores with fp32 accumulation; tf32: tensor cores
# on fp32 inputs; fp32: the FP32 (CUDA) cores. Volta and Turing have no bf16 and no TF32 units:
# their fp32 matmuls run on the FP32 cores, so "tf32" is their fp32 figure.
GPU_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "a100": {"bf16": 312 * _T, "fp16": 312 * _T, "tf32": 156 * _T, "fp32": 19.5 * _T},  # SXM and PCIe alike
    "h100-sxm": {"bf16": 989.5 * _T, "fp16": 989.5 * _T, "tf32": 494.5 * _T, "fp32": 67 * _T},
    "h100-pcie": {"bf16": 756.5 * _T, "fp16": 756.5 * _T, "tf32": 378 * _T, "fp32": 51 * _T},
    "h100-nvl": {"bf16": 835.5 * _T, "fp16": 835.5 * _T, "tf32": 417.5 * _T, "fp32": 60 * _T},
    "h200-sxm": {"bf16": 989.5 * _T, "fp16": 989.5 * _T, "tf32": 494.5 * _T, "fp32": 67 * _T},
    "h200-nvl": {"bf16": 835.5 * _T, "fp16": 835.5 * _T, "tf32": 417.5 * _T, "fp32": 60 * _T},
    "l4": {"bf16": 121 * _T, "fp16": 121 * _T, "tf32": 60 * _T, "fp32": 30.3 * _T},
    # A10G (AWS) figures are the A10 datasheet's.
    "a10": {"bf16": 125 * _T, "fp16": 125 * _T, "tf32": 62.5 * _T, "fp32": 31.2 * _T},
    "rtx-4090": {"bf16": 165.2 * _T, "fp16": 165.2 * _T, "tf32": 82.6 * _T, "fp32": 82.6 * _T},
    "v100-sxm": {"fp16": 125 * _T, "tf32": 15.7 * _T, "fp32": 15.7 * _T},
    "v100-pcie": {"fp16": 112 * _T, "tf32": 14 * _T, "fp32": 14 * _T},
    "v100s-pcie": {"fp16": 130 * _T, "tf32": 16.4 * _T, "fp32": 16.4 * _T},
    "t4": {"fp16": 65 * _T, "tf32": 8.1 * _T, "fp32": 8.1 * _T},
}

_DTYPE_ALIASES = {
    "bf16": "bf16",
    "bfloat16": "bf16",
    "torch.bfloat16": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "torch.float16": "fp16",
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
    "torch.float32": "fp32",
    "tf32": "tf32",
}


def gpu_chip(device_name: str) -> str | None:
    """The GPU_PEAK_FLOPS key for a CUDA device name (torch.cuda.get_device_name), None if unknown."""
    name = device_name.lower()
    if "h200" in name:
        return "h200-nvl" if "nvl" in name else "h200-sxm"
    if "h100" in name:
        if "nvl" in name:
            return "h100-nvl"
        return "h100-pcie" if "pcie" in name else "h100-sxm"  # "NVIDIA H100 80GB HBM3" is the SXM part
    if "a100" in name:
        return "a100"
    if re.search(r"\ba10g?\b", name):
        return "a10"
    if re.search(r"\bl4\b", name):
        return "l4"
    if "4090" in name:
        return "rtx-4090"
    if "v100s" in name:
        return "v100s-pcie"
    if "v100" in name:
        return "v100-pcie" if "pcie" in name else "v100-sxm"
    if re.search(r"\bt4\b", name):
        return "t4"
    return None


def gpu_peak_flops(device_name: str, dtype: Any) -> float | None:
    """Dense peak FLOP/s of a known GPU for a compute dtype, None for an unknown GPU or unsupported dtype.

    `dtype` is a torch dtype or one of "bf16", "fp16", "fp32", "tf32". torch.float32 means the FP32
    cores; pass "tf32" when fp32 matmuls use TF32 (torch.backends.cuda.matmul.allow_tf32, or
    torch.set_float32_matmul_precision("high")).
    """
    key = _DTYPE_ALIASES.get(str(dtype).lower())
    assert key is not None, (
        f"unknown dtype {dtype!r}; expected one of bf16, fp16, fp32, tf32 or a torch dtype"
    )
    chip = gpu_chip(device_name)
    return None if chip is None else GPU_PEAK_FLOPS[chip].get(key)
