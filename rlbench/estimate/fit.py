"""Will it fit: the predicted process peak against a card, and the largest setting that still fits.

The peak compared is the estimate's process peak (the largest phase peak of live tensors; per rank
when the estimate is for several ranks) plus `DEVICE_OVERHEAD_GIB`, what a CUDA process holds
beyond PyTorch's tensors (the CUDA context and the caching allocator's rounding and
fragmentation), plus, for the vllm engine, the share of the card vLLM reserves
(`rollout.gpu_memory_utilization`). It fits when that stays under the card's memory less
`gpus.MARGIN` (20%).

`headroom(suite, "completions_per_step", gib)` finds, per algorithm, the largest value of a rollout
setting whose estimate fits: from the suite's value it goes where the first phase's line through
its probes meets the card (`largest_under`), doubling or halving until it has two, each probe a
full estimate on fake tensors, never past
`MAX_COMPLETIONS` completions or the model's context (`limits`). completions_per_step moves in
whole groups (split evenly over the ranks); group_size moves with the number of prompts per step
held fixed (more completions per prompt), as a user raising G would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from rlbench.config import AlgorithmConfig, Suite, algorithm_params, step_shape
from rlbench.errors import UserError
from rlbench.estimate.gpus import GPUS, MARGIN, gpu_gib, usable_bytes
from rlbench.estimate.parallel import SERIAL, TracePool

GIB = 2**30
DEVICE_OVERHEAD_GIB = 1.0
CARDS = {name.lower(): gib for name, (gib, _) in GPUS.items()}  # GiB each card reports (see rlbench.estimate.gpus)
HEADROOM_FIELDS = ("completions_per_step", "max_new_tokens", "group_size")
# What one trace may be asked to hold: past these the trace's own Python work (one token list and
# one text per completion) takes minutes, and no RL step of this kind is that large.
MAX_COMPLETIONS = 16384
MAX_VALUE = MAX_COMPLETIONS
MAX_SEQUENCE_TOKENS = 1 << 20  # the context assumed of a model whose config names none
Need = int | dict[str, int] | None  # bytes, or bytes per part (the largest counts); None: the estimate failed
INF = float("inf")


def card_gib(gpu_gib_: float | None, gpu: str | None) -> tuple[float, str] | None:
    """(GiB, name) of the card asked for, or None; UserError for a bad figure or an unknown card."""
    if gpu is not None:
        return gpu_gib(gpu)
    if gpu_gib_ is None:
        return None
    if not gpu_gib_ > 0 or gpu_gib_ > 1e6:
        raise UserError(f"--gpu-gib: must be a positive number of GiB, got {gpu_gib_:g}")
    return gpu_gib_, f"{gpu_gib_:g} GiB"


def limits(suite: Suite, context: int | None, prompt_tokens: int) -> None:
    """UserError, one line naming the setting, when a trace of `suite` would not end in seconds:
    more than `MAX_COMPLETIONS` completions, or prompts plus completions longer than the model's
    context (`context`: its max_position_embeddings, None when it names none)."""
    rollout = suite.rollout
    if rollout.completions_per_step > MAX_COMPLETIONS:
        raise UserError(f"rollout.completions_per_step: the estimate traces at most {MAX_COMPLETIONS:,} completions "
                        f"per step, got {rollout.completions_per_step:,}")
    context = context or MAX_SEQUENCE_TOKENS
    if prompt_tokens + rollout.max_new_tokens > context:
        raise UserError(f"--prompt-tokens/rollout.max_new_tokens: {prompt_tokens:,} prompt tokens + "
                        f"{rollout.max_new_tokens:,} new tokens exceed the model's context of {context:,} "
                        "(max_position_embeddings)")


def required_bytes(algorithm: Any, suite: Suite, total_gib: float) -> int:
    """What the card must hold for `algorithm`: its process peak, the device overhead and vLLM's share."""
    needed = algorithm.process_peak_bytes + DEVICE_OVERHEAD_GIB * GIB
    if suite.rollout.engine == "vllm":
        needed += suite.rollout.gpu_memory_utilization * total_gib * GIB
    return int(needed)


def verdict(algorithm: Any, suite: Suite, total_gib: float) -> dict[str, Any]:
    """Fits when what the card must hold stays under its memory less `MARGIN`; `free_bytes`: what is
    left of the card beyond that."""
    needed = required_bytes(algorithm, suite, total_gib)
    usable = usable_bytes(total_gib)
    return {"fits": needed <= usable, "required_bytes": needed, "device_bytes": int(total_gib * GIB),
            "usable_bytes": usable, "margin": MARGIN, "margin_bytes": int(usable - needed),
            "free_fraction": 1 - needed / (total_gib * GIB), "device_overhead_bytes": int(DEVICE_OVERHEAD_GIB * GIB)}


def phase_needs(estimate: Any, suite: Suite, total_gib: float) -> dict[str, int]:
    """What the card must hold in each phase (its peak, the device overhead and vLLM's share): each
    grows about linearly with a rollout setting, the largest of them need not."""
    fixed = required_bytes(estimate, suite, total_gib) - estimate.process_peak_bytes
    return {name: phase.peak_bytes + fixed for name, phase in estimate.phases.items()}


def with_value(suite: Suite, name: str, value: int, algo: AlgorithmConfig) -> Suite:
    """The suite with one rollout setting changed for `algo` (see the module docstring for group_size)."""
    rollout = suite.rollout
    if name == "group_size":
        prompts = max(1, step_shape(algorithm_params(algo), rollout).prompts_per_step)
        rollout = dataclasses.replace(rollout, group_size=value, completions_per_step=prompts * value)
    else:
        rollout = dataclasses.replace(rollout, **{name: value})
    return dataclasses.replace(suite, rollout=rollout)


def search_step(suite: Suite, name: str, algo: AlgorithmConfig, ranks: int = 1) -> int:
    """The unit `name` moves in for `algo`: completions_per_step in whole groups, as many as split
    evenly over `ranks` ranks and the update's minibatches; the others one at a time."""
    if name != "completions_per_step":
        return 1
    params = algorithm_params(algo)
    group = step_shape(params, suite.rollout).group_size
    return group * (ranks * getattr(params, "num_minibatches", 1) if ranks > 1 else 1)


def search_limit(suite: Suite, name: str, algo: AlgorithmConfig, context: int | None, prompt_tokens: int) -> int:
    """The largest value the search for `name` may try (see `limits`)."""
    if name == "max_new_tokens":
        return max(1, (context or MAX_SEQUENCE_TOKENS) - prompt_tokens)
    if name == "group_size":
        return max(1, MAX_COMPLETIONS // max(1, step_shape(algorithm_params(algo), suite.rollout).prompts_per_step))
    return MAX_COMPLETIONS


def headroom(suite: Suite, name: str, total_gib: float, estimate_one: Callable[[Suite, Any], Any],
             context: int | None = None, prompt_tokens: int = 0, ranks: int = 1,
             pool: TracePool = SERIAL) -> dict[str, Any]:
    """Per algorithm label, the largest value of rollout setting `name` that fits `total_gib`
    (`capped`: the search stopped at its limit, `search_limit`, still fitting).

    `estimate_one(suite, algo)` returns an AlgorithmEstimate for one algorithm of a suite; `pool`
    (`parallel.TracePool`) searches the algorithms side by side.
    """
    if name not in HEADROOM_FIELDS:
        raise UserError(f"--headroom: unknown setting '{name}'; choose one of {', '.join(HEADROOM_FIELDS)}")

    def search(index: int) -> dict[str, Any]:
        algo = suite.algorithms[index]
        group = step_shape(algorithm_params(algo), suite.rollout).group_size
        step = search_step(suite, name, algo, ranks)
        if name == "group_size" and group != suite.rollout.group_size:
            return {"value": None, "note": f"its own group_size ({group}) is fixed"}
        if name == "group_size" and ranks > 1:
            return {"value": None, "note": "group_size is searched on one rank only"}

        def required(value: int) -> dict[str, int] | None:
            changed = with_value(suite, name, value, algo)
            estimate = estimate_one(changed, changed.algorithms[index])
            return None if estimate.error else phase_needs(estimate, changed, total_gib)

        limit = search_limit(suite, name, algo, context, prompt_tokens)
        value, probes, _ = largest_under(required, usable_bytes(total_gib), getattr(suite.rollout, name), step, limit)
        return {"value": value, "probes": probes, "step": step, "capped": value is not None and value + step > limit}

    answers = pool.each(search, range(len(suite.algorithms)))
    return {algo.label or algo.name: answer for algo, answer in zip(suite.algorithms, answers)}


def largest_under(required: Callable[[int], Need], usable: int, start: int, step: int = 1,
                  limit: int = MAX_VALUE, trust_line: bool = False) -> tuple[int | None, int, bool]:
    """The largest multiple of `step` up to `limit` whose `required(value)` bytes (monotone in value;
    None: the estimate failed, as not fitting) stay within `usable`; (None if not even `step` does,
    probes made, whether the line settled it).

    `required` gives one figure, or one per part (a phase's peak with the device overhead): the
    card must hold the largest. Each part grows about linearly with the batch, while their maximum
    need not (an eval that does not grow with completions_per_step holds the peak until the update
    overtakes it), so the next value tried is where the first part's line, through the two nearest
    probes, meets `usable`; kept inside the bracket and halving it at least every other probe, so a
    handful of estimates settle what bisection takes a dozen for. `trust_line`: a value the lines
    chose that fits, and past which they leave no multiple that fits, is the answer (the next
    multiple's bytes predicted, not traced: one estimate instead of two or three)."""
    top = max(1, limit // step)
    seen: dict[int, dict[str, float]] = {}
    lo: int | None = None  # the largest multiple known to fit
    hi: int | None = None  # the smallest known not to

    def probe(k: int) -> None:
        nonlocal lo, hi
        seen[k] = _parts(required(k * step))
        if max(seen[k].values()) <= usable:
            lo = k if lo is None else max(lo, k)
        else:
            hi = k if hi is None else min(hi, k)

    probe(min(top, max(1, start // step)))
    halve, confirm = False, None
    while True:
        if lo == top:
            return top * step, len(seen), False
        if hi == 1:
            return None, len(seen), False
        if lo is not None and hi is not None and hi - lo <= 1:
            return lo * step, len(seen), False
        low, high = (lo if lo is not None else max(1, hi // 16)), (hi if hi is not None else min(top, lo * 16))
        finite = sorted((k, parts) for k, parts in seen.items() if INF not in parts.values())
        guess, by_line = None, False
        if confirm is not None:  # the multiple past a value the lines chose, which they put over the card
            guess, confirm = confirm, None
        elif not halve and len(finite) >= 2:
            guess = _crossing(*_nearest(finite, lo, hi), usable)
            by_line = guess is not None and (lo or 0) < guess < (hi or top + 1)
        if guess is None or not (lo or 0) < guess < (hi or top + 1):
            guess = (low + high) // 2 if lo is not None and hi is not None else (lo * 2 if lo is not None else hi // 2)
        guess = max(1, min(top, guess))
        if guess in seen:  # nothing new to learn there: halve the bracket
            guess, by_line = (low + high + 1) // 2, False
        width = (hi or top + 1) - (lo or 0)
        probe(guess)
        if by_line and lo == guess < top and _line_exceeds(seen, guess, usable):
            if trust_line:
                return guess * step, len(seen), True
            confirm = guess + 1  # traced next, rather than doubling past it
        if hi is not None:  # the bracket did not halve: bisect next time
            halve = (hi or top + 1) - (lo or 0) > width // 2
        else:  # no value known too large yet: the line's next guess, unless it just undershot (then double)
            halve = by_line and lo == guess


def _parts(value: Need) -> dict[str, float]:
    if value is None:
        return {"": INF}
    return {k: float(v) for k, v in value.items()} if isinstance(value, dict) else {"": float(value)}


def _crossing(a: tuple[int, dict[str, float]], b: tuple[int, dict[str, float]], usable: int) -> int | None:
    """Where the first part's line through probes `a` and `b` reaches `usable` (None: no part grows)."""
    (ka, pa), (kb, pb) = a, b
    found = []
    for key in pa.keys() & pb.keys():
        slope = (pb[key] - pa[key]) / (kb - ka)
        if slope > 0:
            found.append(ka + (usable - pa[key]) / slope)
    return int(min(found)) if found else None


def _line_exceeds(seen: dict[int, dict[str, float]], k: int, usable: int) -> bool:
    """Whether the lines through probe `k` and the nearest other finite probe put a part of `k + 1` over `usable`."""
    others = [j for j, parts in seen.items() if j != k and INF not in parts.values()]
    if not others:
        return False
    j = min(others, key=lambda j: abs(j - k))
    return any(seen[k][key] + max(0.0, (seen[k][key] - seen[j][key]) / (k - j)) > usable
               for key in seen[k].keys() & seen[j].keys())


def _nearest(points: list[tuple[int, dict[str, float]]], lo: int | None,
             hi: int | None) -> tuple[tuple[int, dict[str, float]], ...]:
    """The two probes nearest the bracket's ends (the bracket's own ends when both are known)."""
    by_k = dict(points)
    if lo in by_k and hi in by_k:
        return (lo, by_k[lo]), (hi, by_k[hi])
    return tuple(points[-2:]) if hi is None else tuple(points[:2])
