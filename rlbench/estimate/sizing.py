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
value's figure predicted, `batch_by_line`); and a batch whose per-rank step a smaller rank count
already traced (twice the suite's batch on N ranks is, per rank, the suite's batch on N/2) takes that
step's work from there and its static state from N's own estimate (`twin_needs`,
`batch_from_ranks`): an answer resting on such a probe is traced on its own.

    answers = size_suite(suite, 79.6, 1, estimates, lambda s, a, n: estimate_algorithm(..., ranks=n))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rlbench.config import AlgorithmConfig, Suite
from rlbench.estimate.fit import largest_under, phase_needs, search_limit, search_step, verdict, with_value
from rlbench.estimate.gpus import usable_bytes
from rlbench.estimate.parallel import SERIAL, TracePool
from rlbench.estimate.predict import STATIC_KINDS
from rlbench.estimate.ranks import rank_errors

RANK_COUNTS = (1, 2, 4, 8, 16, 32, 64)
BATCH_FREE_PHASES = ("eval",)  # phases whose work is the suite's, not the step's batch

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
    needs: dict[int, dict[str, int] | None] = {}  # per value searched, what the card must hold per phase
    twins: dict[int, int] = {}  # value -> the rank count whose estimate gave its needs (`twin_needs`)
    traced: set[int] = set()  # values whose needs must come from their own estimate

    def required(value: int) -> dict[str, int] | None:
        if value in needs:
            return needs[value]
        changed = with_value(suite, "completions_per_step", value, algo)
        if rank_errors(changed, n):
            found = None
        elif value == suite.rollout.completions_per_step:
            found = phase_needs(at_n, changed, total_gib)
        elif value not in traced and (m := twin_count(by_ranks, n, value, suite.rollout.completions_per_step)):
            found = twin_needs(at_n, by_ranks[m], changed, total_gib)
            twins[value] = m
        else:
            estimate = estimate_at(changed, changed.algorithms[index], n)
            found = None if estimate.error else phase_needs(estimate, changed, total_gib)
        needs[value] = found
        return found

    step = search_step(suite, "completions_per_step", algo, n)
    limit = search_limit(suite, "completions_per_step", algo, context, prompt_tokens)
    while True:  # an answer resting on a twin's needs is traced on its own, and the search goes on from there
        value, probes, by_line = largest_under(required, usable_bytes(total_gib), suite.rollout.completions_per_step,
                                               step, limit, trust_line=True)
        if value not in twins or value in traced:
            break
        traced.add(value)
        needs.pop(value)
    out.update(largest_completions_per_step=value, completions_step=step, probes=probes, batch_by_line=by_line,
               capped=value is not None and value + step > limit,
               batch_from_ranks={v: m for v, m in twins.items() if v not in traced})
    return out


def twin_count(by_ranks: dict[int, Any], n: int, value: int, start: int) -> int | None:
    """A rank count below `n` (2 or more) whose estimate at `start` completions runs, per rank, the
    step `n` ranks run at `value` (value / n == start / m), None if none was made."""
    return next((m for m, found in sorted(by_ranks.items()) if 2 <= m < n and not found.error
                 and value * m == start * n), None)


def twin_needs(at_n: Any, twin: Any, suite: Suite, total_gib: float) -> dict[str, int]:
    """What the card must hold per phase at n ranks and a batch whose per-rank step `twin` (at m
    ranks) already ran: its phases' work (their peak less the static state held then) on `at_n`'s
    static state, which the batch does not change; the eval, whose problems are the suite's and do
    not grow with the batch, as at `at_n`. FSDP2 makes each rank's step of the same per-rank batch
    the same on any count of 2 or more (a unit gathers whole; the shards are 1/N): on the 7B shape,
    PPO at 16 ranks and 128 completions so made against its own estimate, every phase within
    0.3 MiB of up to 57 GiB, a little low: the batch the advantages gather to every rank (token
    ids, masks and log-probs of every completion) grows with the whole step."""
    fixed = phase_needs(at_n, suite, total_gib)
    out = {}
    for name, phase in at_n.phases.items():
        own = twin.phases.get(name)
        if name in BATCH_FREE_PHASES or own is None:
            out[name] = fixed[name]
        else:
            out[name] = fixed[name] - phase.peak_bytes + _static(phase) + own.peak_bytes - _static(own)
    return out


def _static(phase: Any) -> int:
    """A phase's static state at its peak (weights, gradients, optimizer state of every role)."""
    return sum(v for kinds in phase.by_role.values() for k, v in kinds.items() if k in STATIC_KINDS)


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
