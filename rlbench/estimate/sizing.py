"""How many GPUs of a kind, and how large a step: the sizing answers of `rlbench estimate --gpu`.

Per algorithm, for a card of `total_gib` (`rlbench.estimate.gpus`, with its 20% margin):

- `fits`: whether the estimate at the asked rank count fits;
- `smallest_ranks`: the smallest power-of-two rank count (1, 2, 4, ... `RANK_COUNTS`) whose
  per-rank estimate fits, each count traced on its own (FSDP2 shards the static state, and each
  rank takes 1/N of the step's prompts); counts the step's prompts do not split over (whole
  groups per rank and per minibatch, as `rlbench run` requires) are skipped and named;
- `largest_completions_per_step`: at that count, the largest completions_per_step that fits
  (`fit.largest_under`, whole groups split evenly over the ranks).

What keeps it to a few estimates: a rank count whose share of the one-process static state
(weights, gradients, AdamW state: at least 1/N of it on each rank, FSDP2's shards padded up) plus
the device overhead already exceeds the card is skipped without a trace; and the batch search
follows each phase's line through its probes (the peak phase may change with the batch: an eval
that does not grow with it holds the peak until the update overtakes it) and trusts the lines once
a value they chose fits and they leave no larger one (`largest_under(trust_line=True)`: the next
value's figure predicted, `batch_by_line`).

    answers = size_suite(suite, 79.6, 1, estimates, lambda s, a, n: estimate_algorithm(..., ranks=n))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rlbench.config import AlgorithmConfig, Suite
from rlbench.estimate.fit import largest_under, phase_needs, search_limit, search_step, verdict, with_value
from rlbench.estimate.gpus import usable_bytes
from rlbench.estimate.parallel import SERIAL, TracePool
from rlbench.estimate.ranks import rank_errors

RANK_COUNTS = (1, 2, 4, 8, 16, 32, 64)

EstimateAt = Callable[[Suite, AlgorithmConfig, int], Any]  # (suite, algorithm, ranks) -> AlgorithmEstimate


def fits(estimate: Any, suite: Suite, total_gib: float) -> bool:
    return not estimate.error and verdict(estimate, suite, total_gib)["fits"]


def size_algorithm(suite: Suite, index: int, total_gib: float, ranks: int, estimate: Any, estimate_at: EstimateAt,
                   context: int | None, prompt_tokens: int) -> dict[str, Any]:
    """The sizing answers for `suite.algorithms[index]`, whose estimate at `ranks` ranks is `estimate`."""
    algo = suite.algorithms[index]
    out: dict[str, Any] = {"ranks": ranks, "fits": fits(estimate, suite, total_gib), "required_bytes_by_ranks": {},
                           "skipped_ranks": {}, "smallest_ranks": None, "largest_completions_per_step": None}
    if estimate.error:
        return out
    fixed = verdict(estimate, suite, total_gib)["required_bytes"] - estimate.process_peak_bytes
    if fixed >= usable_bytes(total_gib):  # the device overhead (and vLLM's share) alone: no rank count helps
        out["note"] = "the device overhead alone exceeds what the card may use with the margin"
        return out
    floor, by_ranks = static_floor(estimate, ranks), {}
    for n in RANK_COUNTS:
        errors = rank_errors(suite, n)
        if errors:
            out["skipped_ranks"][n] = errors[0]
            if n > ranks:
                break  # more ranks split the step no better
            continue
        if n != ranks and floor // n + fixed > usable_bytes(total_gib):
            out["skipped_ranks"][n] = (f"not traced: 1/{n} of the static state alone ({floor / n / 2**30:,.2f} GiB "
                                       "per rank) with the device overhead exceeds what the card may use")
            continue
        at_n = estimate if n == ranks else estimate_at(suite, algo, n)
        by_ranks[n] = at_n
        if at_n.error:
            out["skipped_ranks"][n] = at_n.error
            continue
        out["required_bytes_by_ranks"][n] = verdict(at_n, suite, total_gib)["required_bytes"]
        if fits(at_n, suite, total_gib):
            out["smallest_ranks"] = n
            break
    n = out["smallest_ranks"]
    if n is None:
        return out

    at_n = by_ranks[n]  # the estimate at the suite's own batch on n ranks, already made

    def required(value: int) -> dict[str, int] | None:
        changed = with_value(suite, "completions_per_step", value, algo)
        if rank_errors(changed, n):
            return None
        if value == suite.rollout.completions_per_step and at_n is not None:
            found = at_n
        else:
            found = estimate_at(changed, changed.algorithms[index], n)
        return None if found.error else phase_needs(found, changed, total_gib)

    step = search_step(suite, "completions_per_step", algo, n)
    limit = search_limit(suite, "completions_per_step", algo, context, prompt_tokens)
    value, probes, by_line = largest_under(required, usable_bytes(total_gib), suite.rollout.completions_per_step,
                                           step, limit, trust_line=True)
    out.update(largest_completions_per_step=value, completions_step=step, probes=probes, batch_by_line=by_line,
               capped=value is not None and value + step > limit)
    return out


def static_floor(estimate: Any, ranks: int) -> int:
    """Bytes of static state that N ranks hold at least 1/N of each (FSDP2 shards every weight,
    gradient and AdamW moment, rank 0's shard the largest): the one-process estimate's, 0 when
    `estimate` is already per rank (its shards' sum is no lower bound of the whole)."""
    if ranks != 1 or estimate.error:
        return 0
    return sum(kinds["total"] for kinds in estimate.static.values())


def size_suite(suite: Suite, total_gib: float, ranks: int, estimates: list[Any], estimate_at: EstimateAt,
               context: int | None = None, prompt_tokens: int = 0, pool: TracePool = SERIAL) -> dict[str, dict[str, Any]]:
    """Per algorithm label, `size_algorithm`'s answers (`estimates`: the suite's, in its order);
    with a `pool` of worker processes the algorithms are sized side by side."""
    answers = pool.each(lambda i: size_algorithm(suite, i, total_gib, ranks, estimates[i], estimate_at, context,
                                                 prompt_tokens), range(len(suite.algorithms)))
    return {algo.label or algo.name: answer for algo, answer in zip(suite.algorithms, answers)}
