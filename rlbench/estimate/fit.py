"""Will it fit: the predicted process peak against a card, and the largest setting that still fits.

The peak compared is the estimate's process peak (the largest phase peak of live tensors) plus
`DEVICE_OVERHEAD_GIB`, what a CUDA process holds beyond PyTorch's tensors (the CUDA context and
the caching allocator's rounding and fragmentation), plus, for the vllm engine, the share of the
card vLLM reserves (`rollout.gpu_memory_utilization`).

`headroom(suite, "completions_per_step", gib)` finds, per algorithm, the largest value of a rollout
setting whose estimate fits: it doubles from the suite's value until it does not fit (or halves
until it does), then bisects, each probe a full estimate on fake tensors. completions_per_step
moves in whole groups; group_size moves with the number of prompts per step held fixed (more
completions per prompt), as a user raising G would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from rlbench.config import AlgorithmConfig, Suite, algorithm_params, step_shape
from rlbench.errors import UserError

GIB = 2**30
DEVICE_OVERHEAD_GIB = 1.0
# Memory each card reports (nvidia-smi's total), GiB.
CARDS = {
    "rtx3090": 24.0, "rtx4090": 24.0, "a10g": 22.5, "l4": 22.5, "a100-40gb": 40.0, "a6000": 48.0, "l40s": 45.0,
    "a100-80gb": 80.0, "h100": 79.6, "h200": 140.4,
}
HEADROOM_FIELDS = ("completions_per_step", "max_new_tokens", "group_size")
MAX_VALUE = 1 << 20


def card_gib(gpu_gib: float | None, gpu: str | None) -> tuple[float, str] | None:
    """(GiB, name) of the card asked for, or None; UserError for a bad figure or an unknown card."""
    if gpu is not None:
        key = gpu.strip().lower()
        if key not in CARDS:
            raise UserError(f"--gpu: unknown card '{gpu}'; known: {', '.join(sorted(CARDS))} (or give --gpu-gib N)")
        return CARDS[key], key
    if gpu_gib is None:
        return None
    if not gpu_gib > 0 or gpu_gib > 1e6:
        raise UserError(f"--gpu-gib: must be a positive number of GiB, got {gpu_gib:g}")
    return gpu_gib, f"{gpu_gib:g} GiB"


def required_bytes(algorithm: Any, suite: Suite, total_gib: float) -> int:
    """What the card must hold for `algorithm`: its process peak, the device overhead and vLLM's share."""
    needed = algorithm.process_peak_bytes + DEVICE_OVERHEAD_GIB * GIB
    if suite.rollout.engine == "vllm":
        needed += suite.rollout.gpu_memory_utilization * total_gib * GIB
    return int(needed)


def verdict(algorithm: Any, suite: Suite, total_gib: float) -> dict[str, Any]:
    needed = required_bytes(algorithm, suite, total_gib)
    margin = total_gib * GIB - needed
    return {"fits": margin >= 0, "required_bytes": needed, "device_bytes": int(total_gib * GIB),
            "margin_bytes": int(margin), "margin_fraction": margin / (total_gib * GIB),
            "device_overhead_bytes": int(DEVICE_OVERHEAD_GIB * GIB)}


def with_value(suite: Suite, name: str, value: int, algo: AlgorithmConfig) -> Suite:
    """The suite with one rollout setting changed for `algo` (see the module docstring for group_size)."""
    rollout = suite.rollout
    if name == "group_size":
        prompts = max(1, step_shape(algorithm_params(algo), rollout).prompts_per_step)
        rollout = dataclasses.replace(rollout, group_size=value, completions_per_step=prompts * value)
    else:
        rollout = dataclasses.replace(rollout, **{name: value})
    return dataclasses.replace(suite, rollout=rollout)


def largest_fitting(fits: Callable[[int], bool], start: int, step: int = 1) -> tuple[int | None, int]:
    """The largest multiple of `step` for which `fits` holds (monotone: fits(v) implies fits(u) for u < v),
    searched from `start`; (None if not even `step` fits, probes made)."""
    probes = 0

    def check(v: int) -> bool:
        nonlocal probes
        probes += 1
        return fits(v * step)

    k = max(1, start // step)
    if check(k):
        low, high = k, None
        while high is None:
            if low * 2 * step > MAX_VALUE:
                return low * step, probes
            if check(low * 2):
                low *= 2
            else:
                high = low * 2
    else:
        high, low = k, None
        while low is None:
            if high == 1:
                return None, probes
            if check(high // 2):
                low = high // 2
            else:
                high //= 2
    while high - low > 1:
        mid = (low + high) // 2
        if check(mid):
            low = mid
        else:
            high = mid
    return low * step, probes


def headroom(suite: Suite, name: str, total_gib: float, estimate_one: Callable[[Suite, Any], Any]) -> dict[str, Any]:
    """Per algorithm label, the largest value of rollout setting `name` that fits `total_gib`.

    `estimate_one(suite, algo)` returns an AlgorithmEstimate for one algorithm of a suite.
    """
    if name not in HEADROOM_FIELDS:
        raise UserError(f"--headroom: unknown setting '{name}'; choose one of {', '.join(HEADROOM_FIELDS)}")
    out: dict[str, Any] = {}
    for index, algo in enumerate(suite.algorithms):
        group = step_shape(algorithm_params(algo), suite.rollout).group_size
        step = group if name == "completions_per_step" else 1
        if name == "group_size" and group != suite.rollout.group_size:
            out[algo.label or algo.name] = {"value": None, "note": f"its own group_size ({group}) is fixed"}
            continue

        def fits(value: int, index: int = index, algo: AlgorithmConfig = algo) -> bool:
            changed = with_value(suite, name, value, algo)
            estimate = estimate_one(changed, changed.algorithms[index])
            return not estimate.error and verdict(estimate, changed, total_gib)["fits"]

        value, probes = largest_fitting(fits, getattr(suite.rollout, name), step)
        out[algo.label or algo.name] = {"value": value, "probes": probes, "step": step}
    return out
