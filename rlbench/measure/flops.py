"""Model FLOPs per token, MFU, and the peak FLOP/s that MFU divides by.

MFU (model FLOPs utilization) is defined in PaLM (Chowdhery et al. 2022, appendix B,
https://arxiv.org/abs/2204.02311): the FLOPs the model's math needs per second, over the device's peak FLOP/s.
Recomputation and other work the hardware does on top are not model FLOPs.

Per token, a dense decoder-only transformer with N matmul parameters, L layers, hidden size d (= heads x head
dim) and T attended positions needs (PaLM appendix B):

    forward:                  2N + 4LdT    (2 FLOPs per multiply-add; per layer QK^T and
                                            attention-weights x V each cost 2dT)
    trained (fwd + bwd):      6N + 12LdT   (the backward pass costs twice the forward)

Conventions, as in PaLM and nanoGPT: N excludes input embedding tables (a lookup does no arithmetic) but
includes the output projection (the LM head), once even when tied to the input embedding (`flop_params`). T
counts all positions a token attends to (PaLM ignores the causal mask): a training sequence's length; for
tokens generated with a KV cache, the mean context length (prompt + half the completion).

Run accounting (`pass_flops`, used by budget.flops and by MFU) counts the model FLOPs each pass computes, as
rlbench runs it (a convention that keeps MFU <= 1: never a token the code does not run): a group's prompt
once where the pass shares it, each completion's first C - 1 tokens, the output head only where its output is
used, causal attention (position i attends to i positions; PaLM counts the full square); padding and
recomputation are not model FLOPs. Integer arithmetic: exact on every machine. (An earlier count charged each
completion its prompt, with full-square attention: a bf16-mixed AVX2 step read MFU 1.06; docs/methodology.md.)

Peaks, per compute dtype (MFU divides by the peak of the dtype the matmuls run in: bf16 under bf16-mixed, where
an AMX CPU's bf16 peak is about 7x its fp32 one and an AVX2 CPU's is far below it): `gpu_peak_flops` (datasheet
figures, dense), `cpu_peak_flops` (a matmul, measured once per machine and cached), and `peak_flops`, which
picks one and says which (the report's `mfu_peak`). `cpu_read_bandwidth`, cached beside them, is the floor of
a phase that streams its weights. The cache key is the CPU's identity (`cpu_identity`): a cache copied to
another machine never lends it this one's figures."""

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
    """N for model_flops_per_token: all parameters but embedding tables, plus a tied LM head once. An
    nn.Embedding weight is excluded unless an nn.Linear uses the same Parameter (a tied output projection, a
    real matmul per token); each Parameter object is counted once."""
    import torch

    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    embedding_only = {id(m.weight) for m in model.modules()
                      if isinstance(m, torch.nn.Embedding) and id(m.weight) not in linear_weights}
    return sum(p.numel() for p in model.parameters() if id(p) not in embedding_only)


@dataclass(frozen=True)
class FlopShape:
    """What the FLOP count needs of a model: N, L and d; the output head's share of N; the width of a
    position's keys (or values) in one layer, for the bytes a decoder streams."""

    n_params: int
    n_layers: int
    hidden: int
    head_params: int = 0  # the output projection's part of n_params (LM head, or a scalar head)
    kv_width: int = 0  # key/value heads x head dim (0: unknown)


def flop_shape(model: Any) -> FlopShape:
    """N (flop_params), layers, hidden size, head parameters and key/value width of a causal LM or of a
    scalar-head model (its backbone's config; its `head` is the output projection)."""
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
    """What a cached CPU measurement belongs to: the CPU (model, vendor, ISA features), the kernels torch
    uses on it (capability, ISA limits), the torch build and its threads. A cache copied to another
    machine, or read under other threads or kernels, measures afresh."""
    import torch

    from rlbench.environment import cpu_capability, cpu_features, cpu_vendor, numeric_env

    limits = ",".join(f"{k}={v}" for k, v in numeric_env().items() if v is not None and "THREADS" not in k)
    return (f"{cpu_model_name()} | {cpu_vendor()} | {'+'.join(cpu_features()) or 'no listed features'} | "
            f"capability {cpu_capability()}{' ' + limits if limits else ''} | torch {torch.__version__} | "
            f"threads {torch.get_num_threads()}")


MATMUL_FIRST_N = 256  # the first size timed (or max_n, if smaller)
MIN_CALL_SECONDS = 0.2  # a call this long runs at its kernels' steady rate: the size timed stops doubling
MIN_TOTAL_SECONDS = 1.0  # rounds at the chosen size go on (up to MAX_TIMED_CALLS) until this much has passed
MAX_TIMED_CALLS = 50


def next_matmul_size(n: int, max_n: int, seconds: dict[str, float],
                     min_seconds: float = MIN_CALL_SECONDS) -> tuple[list[str], int | None]:
    """After one timed call of each layout at size n (`seconds`): the layouts kept, those under 3x the
    fastest (a layout 3x slower is not the peak's), and the next size to time, 2n, or None to time n (it
    reached max_n, or its fastest call took min_seconds: the kernels' steady rate)."""
    best = min(seconds.values())
    kept = [name for name, s in seconds.items() if s < 3 * best]
    return kept, None if n >= max_n or best >= min_seconds else 2 * n


def more_matmul_calls(calls: int, elapsed: float, reps: int, min_total_seconds: float = MIN_TOTAL_SECONDS) -> bool:
    """Whether to time another round at the chosen size, after `calls` rounds in `elapsed` seconds: until
    `reps` rounds, and on while under min_total_seconds, up to MAX_TIMED_CALLS."""
    return calls < reps or (elapsed < min_total_seconds and calls < MAX_TIMED_CALLS)


@dataclass(frozen=True)
class MatmulTiming:
    """What time_matmul timed: size n, the layouts kept, the rounds, every call's seconds at n."""

    n: int
    layouts: tuple[str, ...]
    calls: int
    seconds: tuple[float, ...]

    @property
    def flops_per_s(self) -> float:
        return 2 * self.n**3 / min(self.seconds)  # n^3 multiply-adds, 2 FLOPs each, over the fastest call


def _seconds(call: Any, *args: Any) -> float:
    start = time.perf_counter()
    call(*args)
    return time.perf_counter() - start


def time_matmul(dtype: str, max_n: int, reps: int, min_seconds: float = MIN_CALL_SECONDS,
                min_total_seconds: float = MIN_TOTAL_SECONDS) -> MatmulTiming:
    """Time n x n matmuls in `dtype` in two layouts, as a model computes them: `a @ b` (torch.mm) and
    `x @ w.T` (F.linear), which torch sends to different kernels (on an AVX2 CPU without bf16 units the bf16
    linear ran 3-7x faster than the bf16 mm, under load). n doubles from MATMUL_FIRST_N (next_matmul_size,
    one call per layout after a warm-up) to the kernels' steady rate, yet a dtype this CPU has no units for
    is timed in seconds; then rounds of the layouts kept (more_matmul_calls): the fastest is the least slowed."""
    import torch
    import torch.nn.functional as F

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    layouts = {"mm": torch.mm, "linear": F.linear}
    n, kept = min(MATMUL_FIRST_N, max_n), list(layouts)
    while True:
        a, b = torch.randn(n, n).to(torch_dtype), torch.randn(n, n).to(torch_dtype)
        seconds = {}
        for name in kept:
            layouts[name](a, b)  # warm-up: thread pool start, first-touch of the output, kernel selection
            seconds[name] = _seconds(layouts[name], a, b)
        kept, following = next_matmul_size(n, max_n, seconds, min_seconds)
        if following is None:
            break
        n = following
    timed, calls, began = list(seconds.values()), 0, time.perf_counter()
    while more_matmul_calls(calls, time.perf_counter() - began, reps, min_total_seconds):
        calls += 1
        timed += [_seconds(layouts[name], a, b) for name in kept]
    return MatmulTiming(n, tuple(kept), calls, tuple(timed))


def measure_matmul_flops(dtype: str, max_n: int, reps: int, min_seconds: float = MIN_CALL_SECONDS,
                         min_total_seconds: float = MIN_TOTAL_SECONDS) -> float:
    """FLOP/s of the fastest matmul time_matmul timed, the best of both layouts: no run's model FLOP/s
    can pass it for a layout it was not measured in (a peak measured low would let a run's MFU pass 1)."""
    return time_matmul(dtype, max_n, reps, min_seconds, min_total_seconds).flops_per_s


def read_elements(nbytes: int) -> int:
    """fp32 elements in `nbytes` (at least one): what measure_read_bandwidth sums."""
    return max(nbytes // 4, 1)


def measure_read_bandwidth(nbytes: int, reps: int) -> float:
    """Bytes per second read by the fastest of `reps` sums over an fp32 tensor of `nbytes` (with torch's
    threads), after one warm-up. 1 GiB is larger than any CPU's last-level cache."""
    import torch

    x = torch.ones(read_elements(nbytes), dtype=torch.float32)  # ones: the pages are written, so resident
    x.sum()
    best = float("inf")
    for _ in range(reps):
        best = min(best, _seconds(x.sum))
    return x.numel() * x.element_size() / best


def _cached(cache_dir: str | os.PathLike[str], key: str, measure: Any, at_least: float = 0.0, **details: Any) -> float:
    """The value cached under `key` in cache_dir/CPU_PEAK_CACHE_FILE, else `measure()` stored there
    (atomically: a reader never sees half a file). A cached value below `at_least` (a rate a run reached:
    it was measured while other processes ran) is measured again, and the larger kept."""
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
    """This machine's memory read bandwidth in bytes per second (measure_read_bandwidth), measured once
    and cached beside the peaks, under cpu_identity() and the size read: the floor of a phase that streams
    its weights (decode) is its bytes over this figure."""
    key = f"{cpu_identity()} | read {nbytes} bytes"
    return _cached(cache_dir, key, lambda: measure_read_bandwidth(nbytes, reps), kind="read_bytes_per_s",
                   nbytes=nbytes, reps=reps)


# ----------------------------------------------------------------------------------------- GPU

_T = 1e12
# Dense (no sparsity) peak FLOP/s from NVIDIA's datasheets, which print tensor-core figures with 2:4 sparsity
# (twice these). bf16/fp16: tensor cores with fp32 accumulation; tf32: tensor cores on fp32 inputs; fp32: the
# FP32 (CUDA) cores. Volta and Turing have no bf16 and no TF32 units: "tf32" is their fp32 figure.
GPU_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "a100": {"bf16": 312 * _T, "fp16": 312 * _T, "tf32": 156 * _T, "fp32": 19.5 * _T},  # SXM and PCIe alike
    "h100-sxm": {"bf16": 989.5 * _T, "fp16": 989.5 * _T, "tf32": 494.5 * _T, "fp32": 67 * _T},
    "h100-pcie": {"bf16": 756.5 * _T, "fp16": 756.5 * _T, "tf32": 378 * _T, "fp32": 51 * _T},
    "h100-nvl": {"bf16": 835.5 * _T, "fp16": 835.5 * _T, "tf32": 417.5 * _T, "fp32": 60 * _T},
    "h200-sxm": {"bf16": 989.5 * _T, "fp16": 989.5 * _T, "tf32": 494.5 * _T, "fp32": 67 * _T},
    "h200-nvl": {"bf16": 835.5 * _T, "fp16": 835.5 * _T, "tf32": 417.5 * _T, "fp32": 60 * _T},
    "l4": {"bf16": 121 * _T, "fp16": 121 * _T, "tf32": 60 * _T, "fp32": 30.3 * _T},
    "a10": {"bf16": 125 * _T, "fp16": 125 * _T, "tf32": 62.5 * _T, "fp32": 31.2 * _T},  # A10G (AWS) too
    "rtx-4090": {"bf16": 165.2 * _T, "fp16": 165.2 * _T, "tf32": 82.6 * _T, "fp32": 82.6 * _T},
    "v100-sxm": {"fp16": 125 * _T, "tf32": 15.7 * _T, "fp32": 15.7 * _T},
    "v100-pcie": {"fp16": 112 * _T, "tf32": 14 * _T, "fp32": 14 * _T},
    "v100s-pcie": {"fp16": 130 * _T, "tf32": 16.4 * _T, "fp32": 16.4 * _T},
    "t4": {"fp16": 65 * _T, "tf32": 8.1 * _T, "fp32": 8.1 * _T},
}

_DTYPE_ALIASES = {**dict.fromkeys(("bf16", "bfloat16", "torch.bfloat16"), "bf16"), "tf32": "tf32",
                  **dict.fromkeys(("fp16", "float16", "half", "torch.float16"), "fp16"),
                  **dict.fromkeys(("fp32", "float32", "float", "torch.float32"), "fp32")}


def gpu_chip(device_name: str) -> str | None:
    """The GPU_PEAK_FLOPS key for a CUDA device name (torch.cuda.get_device_name), None if unknown."""
    name = device_name.lower()
    if "h200" in name:
        return "h200-nvl" if "nvl" in name else "h200-sxm"
    if "h100" in name:  # "NVIDIA H100 80GB HBM3" is the SXM part
        return "h100-nvl" if "nvl" in name else "h100-pcie" if "pcie" in name else "h100-sxm"
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
    `dtype` is a torch dtype or one of "bf16", "fp16", "fp32", "tf32". torch.float32 means the FP32 cores; pass
    "tf32" when fp32 matmuls use TF32 (torch.set_float32_matmul_precision("high") or its allow_tf32 flag)."""
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
    datasheet figure (None for a GPU or dtype not in the table), a CPU's measured and cached one, measured
    again below `at_least` (tf32 is a GPU mode: on a CPU it is fp32)."""
    import torch

    device = torch.device(device)
    key = dtype_key(dtype)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        value = gpu_peak_flops(name, key)
        return None if value is None else Peak(value, key, "datasheet", name)
    key = "fp32" if key == "tf32" else key
    return Peak(cpu_peak_flops(cache_dir, key, at_least=at_least), key, "measured", cpu_model_name())
