"""Each phase against its floor on this hardware: a roofline per phase.

No phase can run faster than the larger of two lower bounds:

- compute: its model FLOPs (`flops.pass_flops`, what budget.flops counts) over the peak FLOP/s of
  the dtype its matmuls run in (`flops.peak_flops`: bf16 under bf16-mixed);
- memory: the bytes it must read over the machine's measured read bandwidth
  (`flops.cpu_read_bandwidth`, cached beside the peaks; on a GPU none is measured, so the floor
  there is the compute one).

The bytes counted (`decode_bytes`, `pass_bytes`) are the least each phase reads, in the compute
dtype: generation reads every matmul weight once for the prefill and once per decoding step (all
rows of a step share one read), and at each step the keys and values of every position a live
row attends to (a group's prompt once, each row's own tokens); a forward pass over a batch (score,
log-probs, values) reads the weights once, a trained pass twice (forward and backward). The
optimizer's passes over its state are not counted, so the update's memory floor is low; it is
compute-bound at any size where MFU means something. Decoding is memory-bound: at 8 rows a
0.5B model does 8 multiply-adds per weight read, where a CPU needs tens to reach its peak.

The report's `roofline` entry of a run gives, per phase: `floor_s` (the larger bound), `bound`
("compute" or "memory"), both bounds, the measured seconds and `ratio` = measured / floor (1.0
would be the machine's limit; how far the code is from the hardware).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlbench.measure.flops import FlopShape


def weight_bytes(shape: FlopShape, element_bytes: int) -> int:
    """Bytes of the matmul weights (N, `flops.flop_params`) in a dtype of `element_bytes`."""
    return shape.n_params * element_bytes


def decode_bytes(shape: FlopShape, prompt_lengths: Sequence[int], completion_lengths: Sequence[int], group: int,
                 element_bytes: int) -> int:
    """Least bytes a batched KV-cache decoder reads to generate these completions (rows in groups of
    `group` sharing the first row's prompt of P real tokens; row r has C_r real tokens).

    The prefill reads the weights once; decoding step s (s = 0 .. max C - 2) feeds token s of every
    row that has a token s + 1 to come, reading the weights once and, per layer, the keys and
    values of: the prompt of each group with such a row, and each such row's s + 1 own positions.
    """
    assert len(prompt_lengths) == len(completion_lengths) and len(prompt_lengths) % group == 0
    kv_position = 2 * shape.n_layers * (shape.kv_width or shape.hidden) * element_bytes  # keys + values, all layers
    steps = max((int(c) for c in completion_lengths), default=1) - 1
    positions = 0
    for start in range(0, len(prompt_lengths), group):
        p = int(prompt_lengths[start])
        fed = [max(int(c) - 1, 0) for c in completion_lengths[start:start + group]]
        positions += p * max(fed, default=0)  # the group's prompt, at each step a row of it is fed
        positions += sum(f * (f + 1) // 2 for f in fed)  # own positions: 1 + 2 + .. + f
    return weight_bytes(shape, element_bytes) * (1 + max(steps, 0)) + kv_position * positions


def pass_bytes(shape: FlopShape, element_bytes: int, reads: int = 1) -> int:
    """Least bytes a batched pass reads: its weights `reads` times (2 for a trained pass)."""
    return weight_bytes(shape, element_bytes) * reads


def phase_floor(flops: float, nbytes: float, peak_flops_per_s: float | None,
                bytes_per_s: float | None) -> dict[str, Any] | None:
    """{compute_s, memory_s, floor_s, bound} of one phase; a bound is None where its rate is
    unknown; None when neither is known."""
    compute = flops / peak_flops_per_s if peak_flops_per_s and flops else None
    memory = nbytes / bytes_per_s if bytes_per_s and nbytes else None
    bounds = {name: s for name, s in (("compute", compute), ("memory", memory)) if s is not None}
    if not bounds:
        return None
    bound = max(bounds, key=bounds.get)
    return {"compute_s": compute, "memory_s": memory, "floor_s": bounds[bound], "bound": bound}


def roofline(phase_seconds: dict[str, float], flops_by_phase: dict[str, int], bytes_by_phase: dict[str, int],
             peak_flops_per_s: float | None, bytes_per_s: float | None) -> dict[str, dict[str, Any]]:
    """Per phase that has model FLOPs or bytes counted and a measured time: its floor
    (`phase_floor`), `measured_s` and `ratio` = measured / floor."""
    out = {}
    for phase in [p for p in flops_by_phase if p in phase_seconds] + \
            [p for p in bytes_by_phase if p in phase_seconds and p not in flops_by_phase]:
        floor = phase_floor(flops_by_phase.get(phase, 0), bytes_by_phase.get(phase, 0), peak_flops_per_s, bytes_per_s)
        if floor is None or not floor["floor_s"]:
            continue
        measured = phase_seconds[phase]
        out[phase] = {**floor, "measured_s": measured, "ratio": measured / floor["floor_s"]}
    return out


NATIVE_BF16 = ("amx_bf16", "avx512_bf16")  # CPU features whose bf16 matmuls beat fp32 ones


def precision_advice(precision: str, device_type: str, cache_dir: Any, features: Sequence[str] | None = None) -> str | None:
    """One line for a suite that computes in fp32 on a CPU with native bf16 units (AMX or
    AVX512-BF16): how much faster this CPU's measured bf16 matmul peak is, and the settings that
    use it. None elsewhere (on an AVX2 CPU bf16 is slower than fp32). Advice only: the precision
    the suite asked for (`precision: auto` follows model.dtype) is what runs."""
    from rlbench.environment import cpu_features
    from rlbench.measure.flops import cpu_peak_flops

    units = [f for f in NATIVE_BF16 if f in (cpu_features() if features is None else features)]
    if precision != "fp32" or device_type != "cpu" or not units:
        return None
    ratio = cpu_peak_flops(cache_dir, "bf16") / cpu_peak_flops(cache_dir, "fp32")
    return (f"this suite computes in fp32 on a CPU with native bf16 ({', '.join(units)}), whose measured bf16 matmul "
            f"peak is {ratio:.1f}x its fp32 one: --set model.precision=bf16-mixed --set model.dtype=bfloat16 computes "
            "in bf16 with fp32 master weights (other numbers than fp32's)")
