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

Run accounting (`pass_flops`, used by budget.flops and by MFU) counts the model FLOPs each pass
computes, as rlbench runs it (a convention that keeps MFU <= 1: never a token the code does not
run). Per group of G completions sharing a prompt of P real tokens, each completion with C real
tokens: the prompt runs once per group where the pass shares it (generation's prefill, the packed
log-prob passes), each completion's first C - 1 tokens run per row (the last token predicts
nothing), the output head (LM or scalar head: `FlopShape.head_params`) only where its output is
used (generation: the prompt's last position once per group, then each fed token; log-probs and
values: the C positions predicting completion tokens), and attention is causal: the token at
position i attends to i positions (a KV-cache decoder's work; PaLM counts the full square).
Padding and recomputation (micro-batch re-forwards, checkpointed chunks) are not model FLOPs. Integer arithmetic
throughout: exact and the same on every machine. (An earlier count charged each completion its
prompt, with full-square attention: a bf16-mixed step on an AVX2 CPU read MFU 1.06; see
docs/methodology.md.)

Peaks, per compute dtype (MFU divides by the peak of the dtype the matmuls run in: bf16 under
bf16-mixed, where an AMX CPU's bf16 peak is about 7x its fp32 one and an AVX2 CPU's is far below
it): `gpu_peak_flops` looks a GPU up in a table of datasheet figures (dense, no sparsity);
`cpu_peak_flops` measures a matmul in the dtype once per machine and caches it; `peak_flops` picks
one and says which (value, dtype, measured or datasheet: the report's `mfu_peak`).
`cpu_read_bandwidth` measures the memory read bandwidth once and caches it beside the peaks (the
floor of a phase that streams its weights). The cache key is the CPU's identity (model, vendor,
ISA features, torch's kernels and threads, `cpu_identity`): a cache copied to another machine never
lends it this one's figures.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rlbench.environment import cpu_model_name

CPU_PEAK_CACHE_FILE = "cpu_peaks.json"  # peak FLOP/s per dtype and read bandwidth, per CPU identity


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
    """What the FLOP count needs of a model: N, L and d; the output head's share of N; the width
    of a position's keys (or values) in one layer, for the bytes a decoder streams."""

    n_params: int
    n_layers: int
    hidden: int
    head_params: int = 0  # the output projection's part of n_params (LM head, or a scalar head)
    kv_width: int = 0  # key/value heads x head dim (0: unknown)


def flop_shape(model: Any) -> FlopShape:
    """N (flop_params), layers, hidden size, head parameters and key/value width of a causal LM or
    of a scalar-head model (its backbone's config; its `head` is the output projection)."""
    config = getattr(model, "config", None) or model.backbone.config
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else getattr(model, "head", None)
    head_params = 0 if head is None else sum(p.numel() for p in head.parameters())
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return FlopShape(flop_params(model), config.num_hidden_layers, config.hidden_size, head_params, kv_heads * head_dim)


PASS_KINDS = ("sample", "logprobs", "sequence")


def pass_flops(shape: FlopShape, prompt_lengths: Sequence[int], completion_lengths: Sequence[int], group: int,
               kind: str, training: bool = False) -> int:
    """Model FLOPs of one pass over rows in groups of `group` consecutive rows sharing one prompt
    (see the module docstring), as rlbench computes it:

    - "sample" (generation): each group's P prompt tokens once, then each row's first C - 1 tokens;
      the head at the prompt's last position once per group and at every fed token.
    - "logprobs" (old, reference and policy log-probs, values): the same tokens; the head at the C
      positions predicting each completion token, per row.
    - "sequence" (the reward model's score): every row in full, P + C tokens, head at every position.

    Forward: 2 x (N - head) per token run, 2 x head per head position, 4Ld per attended position
    (causal: position i attends to i); `training` triples it. prompt_lengths[r] and
    completion_lengths[r] are row r's real tokens (a group's rows share the first one's prompt).
    """
    assert kind in PASS_KINDS, f"kind {kind!r}: expected one of {PASS_KINDS}"
    assert len(prompt_lengths) == len(completion_lengths) and len(prompt_lengths) % group == 0, \
        f"{len(prompt_lengths)} rows with {len(completion_lengths)} completions are not whole groups of {group}"
    tokens = heads = attended_twice = 0  # attended_twice: 2 x attended positions, exact for sums of 1..T
    for start in range(0, len(prompt_lengths), group):
        p, rows = int(prompt_lengths[start]), [int(c) for c in completion_lengths[start:start + group]]
        if kind == "sequence":
            tokens += sum(p + c for c in rows)
            heads += sum(p + c for c in rows)
            attended_twice += sum((p + c) * (p + c + 1) for c in rows)
            continue
        fed = [max(c - 1, 0) for c in rows]  # completion tokens run: every one but the last
        tokens += p + sum(fed)
        heads += (1 + sum(fed)) if kind == "sample" else sum(rows)
        attended_twice += p * (p + 1) + sum(f * (2 * p + f + 1) for f in fed)  # 2 x sum_{j=1..f} (p + j)
    body = shape.n_params - shape.head_params
    forward = 2 * body * tokens + 2 * shape.head_params * heads + 2 * shape.n_layers * shape.hidden * attended_twice
    return 3 * forward if training else forward


def mfu(flops: float, seconds: float, peak_flops: float) -> float:
    """Model FLOPs utilization: flops / seconds / peak_flops (a fraction, 1.0 = the device's peak)."""
    assert seconds > 0, f"seconds must be > 0, got {seconds}"
    assert peak_flops > 0, f"peak_flops must be > 0, got {peak_flops}"
    return flops / seconds / peak_flops


# ----------------------------------------------------------------------------------------- CPU

CPU_DTYPES = ("fp32", "bf16", "fp16")


def cpu_identity() -> str:
    """What a cached CPU measurement belongs to: the CPU (model, vendor, ISA features), the kernels
    torch uses on it (capability, ISA limits), the torch build and its threads. A cache copied to
    another machine, or read under other threads or kernels, measures afresh."""
    import torch

    from rlbench.environment import cpu_capability, cpu_features, cpu_vendor, numeric_env

    limits = ",".join(f"{k}={v}" for k, v in numeric_env().items() if v is not None and "THREADS" not in k)
    return (f"{cpu_model_name()} | {cpu_vendor()} | {'+'.join(cpu_features()) or 'no listed features'} | "
            f"capability {cpu_capability()}{' ' + limits if limits else ''} | torch {torch.__version__} | "
            f"threads {torch.get_num_threads()}")


def measure_matmul_flops(dtype: str, max_n: int, reps: int, min_seconds: float = 0.2,
                         min_total_seconds: float = 1.0) -> float:
    """FLOP/s of the fastest n x n matmul in `dtype` (2n^3 FLOPs each) of at least `reps` timed calls
    per layout, after one warm-up call each, and more (up to 50) until min_total_seconds have passed:
    on a shared machine the best of many calls is the one least slowed by other processes, and a
    peak measured low would let a run's MFU pass 1.

    Two layouts, as a model computes them: `a @ b` (torch.mm) and `x @ w.T` (F.linear, weights
    stored transposed), which torch sends to different kernels: on an AVX2 CPU without bf16 units
    the bf16 linear ran 3-7x faster than the bf16 mm (measured under load, 2 cores). The peak is
    the best of both, so no run's model FLOP/s can pass it for a layout it was not measured in.
    n starts at 256 and doubles up to max_n while a call takes under min_seconds: large enough for
    the kernels' steady rate, small enough that a dtype this CPU has no units for (bf16 on AVX2:
    tens of times slower than fp32) is measured in seconds, not minutes.
    """
    import torch
    import torch.nn.functional as F

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    layouts = [torch.mm, F.linear]
    n = min(256, max_n)
    while True:
        a = torch.randn(n, n).to(torch_dtype)
        b = torch.randn(n, n).to(torch_dtype)
        seconds = {}
        for layout in layouts:
            layout(a, b)  # warm-up: thread pool start, first-touch of the output, kernel selection
            start = time.perf_counter()
            layout(a, b)
            seconds[layout] = time.perf_counter() - start
        best = min(seconds.values())
        layouts = [f for f in layouts if seconds[f] < 3 * best]  # a layout 3x slower is not the peak's
        if n >= max_n or best >= min_seconds:
            break
        n *= 2
    began, calls = time.perf_counter(), 0
    while calls < reps or (time.perf_counter() - began < min_total_seconds and calls < 50):
        calls += 1
        for layout in layouts:
            start = time.perf_counter()
            layout(a, b)
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def measure_read_bandwidth(nbytes: int, reps: int) -> float:
    """Bytes per second read by the fastest of `reps` sums over an fp32 tensor of `nbytes` (with
    torch's threads), after one warm-up. 1 GiB is larger than any CPU's last-level cache."""
    import torch

    x = torch.ones(max(nbytes // 4, 1), dtype=torch.float32)  # ones: the pages are written, so resident
    x.sum()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best


def _cached(cache_dir: str | os.PathLike[str], key: str, measure: Any, at_least: float = 0.0, **details: Any) -> float:
    """The value cached under `key` in cache_dir/CPU_PEAK_CACHE_FILE, else `measure()` stored there
    (atomically: a reader never sees half a file). A cached value below `at_least` (a rate a run
    reached: it was measured while other processes ran) is measured again, and the larger kept."""
    path = Path(cache_dir) / CPU_PEAK_CACHE_FILE
    try:
        cache = json.loads(path.read_text())
        assert isinstance(cache, dict)
    except (OSError, ValueError, AssertionError):
        cache = {}
    entry = cache.get(key)
    cached = entry["value"] if isinstance(entry, dict) and isinstance(entry.get("value"), (int, float)) else 0.0
    if cached > 0 and cached >= at_least:
        return float(cached)
    value = max(float(measure()), cached)
    cache[key] = {"value": value, **details,
                  "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(cache, tmp, indent=2)
    os.replace(tmp.name, path)
    return value


def cpu_peak_flops(cache_dir: str | os.PathLike[str], dtype: str = "fp32", max_n: int = 2048, reps: int = 3,
                   at_least: float = 0.0) -> float:
    """Peak FLOP/s of this CPU in `dtype` (fp32, bf16, fp16), measured once with a matmul
    (measure_matmul_flops) and cached in cache_dir under cpu_identity(), the dtype and max_n; measured
    again where a run's model FLOP/s (`at_least`) passed it (a peak measured under load)."""
    assert dtype in CPU_DTYPES, f"dtype {dtype!r}: expected one of {CPU_DTYPES}"
    key = f"{cpu_identity()} | {dtype} mm and linear up to {max_n}"
    return _cached(cache_dir, key, lambda: measure_matmul_flops(dtype, max_n, reps), at_least,
                   kind="peak_flops_per_s", dtype=dtype, max_n=max_n, reps=reps)


def cpu_read_bandwidth(cache_dir: str | os.PathLike[str], nbytes: int = 2**30, reps: int = 3) -> float:
    """This machine's memory read bandwidth in bytes per second (measure_read_bandwidth), measured
    once and cached beside the peaks, under cpu_identity() and the size read: the floor of a phase
    that streams its weights (decode) is its bytes over this figure."""
    key = f"{cpu_identity()} | read {nbytes} bytes"
    return _cached(cache_dir, key, lambda: measure_read_bandwidth(nbytes, reps), kind="read_bytes_per_s",
                   nbytes=nbytes, reps=reps)


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
    chip = gpu_chip(device_name)
    return None if chip is None else GPU_PEAK_FLOPS[chip].get(dtype_key(dtype))


def dtype_key(dtype: Any) -> str:
    """'bf16', 'fp16', 'fp32' or 'tf32' for a torch dtype or one of their names."""
    key = _DTYPE_ALIASES.get(str(dtype).lower())
    assert key is not None, f"unknown dtype {dtype!r}; expected one of bf16, fp16, fp32, tf32 or a torch dtype"
    return key


@dataclass(frozen=True)
class Peak:
    """The peak FLOP/s MFU divides by, and where it came from (recorded in the report: `mfu_peak`)."""

    flops_per_s: float
    dtype: str  # the compute dtype: bf16, fp16, fp32 or tf32
    source: str  # "measured" (a CPU matmul, cached per machine) or "datasheet" (GPU_PEAK_FLOPS)
    device: str  # the CPU model or GPU name

    def as_dict(self) -> dict[str, Any]:
        return {"flops_per_s": self.flops_per_s, "dtype": self.dtype, "source": self.source, "device": self.device}


def peak_flops(device: Any, dtype: Any, cache_dir: str | os.PathLike[str], at_least: float = 0.0) -> Peak | None:
    """The peak of `device` (a torch.device or 'cpu'/'cuda') in compute dtype `dtype`: a CUDA GPU's
    datasheet figure (None for a GPU or dtype not in the table), a CPU's measured and cached one,
    measured again below `at_least` (tf32 is a GPU mode: on a CPU it is fp32)."""
    import torch

    device = torch.device(device)
    key = dtype_key(dtype)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        value = gpu_peak_flops(name, key)
        return None if value is None else Peak(value, key, "datasheet", name)
    key = "fp32" if key == "tf32" else key
    return Peak(cpu_peak_flops(cache_dir, key, at_least=at_least), key, "measured", cpu_model_name())
