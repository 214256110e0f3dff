"""From traced runs to each phase's predicted peak, by role and kind, at the model's real depth.

A model of 28 decoder layers is traced at 4 and 5 layers (`TRACE_DEPTHS`): in each region of a
phase (see `rlbench.estimate.trace`) the live bytes at the peak are an affine function of the
depth (weights, gradients, optimizer state and KV cache grow by one layer's worth per layer, saved
activations by one layer's worth in the direction the pass runs), so two depths give the line and
its value at 28, region by region and label by label; the phase's peak is the largest region. A
model of at most `EXACT_UP_TO` layers is traced as it is. `exact=True` always traces every layer.

    algo = estimate_algorithm(suite, suite.algorithms[0], source)   # an AlgorithmEstimate
    algo.phases["update"].peak_bytes, algo.process_peak_bytes
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

from rlbench.config import AlgorithmConfig, Suite
from rlbench.estimate.parallel import SERIAL, TracePool
from rlbench.estimate.simulate import Trace, TraceFailed
from rlbench.estimate.trace import KINDS, Peak
from rlbench.measure.summary import PHASE_ROLE

TRACE_DEPTHS = (4, 5)  # with 2 and 3 middle layers: FSDP2 prefetches a middle unit in both (3 and 4 were 1.9% high
# on the 7B update per rank: at 3 layers the first unit is prefetched during the only middle one)
EXACT_UP_TO = 6
STATIC_KINDS = ("weights", "gradients", "optimizer")
PHASE_ORDER = ("generate", "old_logprobs", "score", "ref_logprobs", "values", "advantages", "update",
               "value_update", "eval")


@dataclass
class PhaseEstimate:
    """One phase: its role, the highest live bytes in any of its calls (`peak_bytes`), the largest
    rise above a call's start (`rise_bytes`), the largest such rise net of the static state the call
    created and left (`transient_bytes`; the traced step starts from the steady state, so an update
    creates none), and what was alive at the peak, by role and kind."""

    role: str
    calls: int
    peak_bytes: int
    rise_bytes: int
    transient_bytes: int
    start_bytes: int
    by_role: dict[str, dict[str, int]]

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "calls": self.calls, "peak_bytes": self.peak_bytes, "rise_bytes": self.rise_bytes,
                "transient_bytes": self.transient_bytes, "start_bytes": self.start_bytes, "by_role": self.by_role}


@dataclass
class AlgorithmEstimate:
    label: str
    algorithm: str
    roles: tuple[str, ...]
    static: dict[str, dict[str, int]]  # role -> weights, gradients, optimizer, total
    phases: dict[str, PhaseEstimate]
    traced_depths: tuple[int, ...]
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # rlbench's code failed while traced (a run would fail the same way)

    @property
    def peak_phase(self) -> str | None:
        return max(self.phases, key=lambda p: self.phases[p].peak_bytes) if self.phases else None

    @property
    def process_peak_bytes(self) -> int:
        return self.phases[self.peak_phase].peak_bytes if self.phases else 0

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "algorithm": self.algorithm, "roles": list(self.roles), "static": self.static,
                "phases": {name: p.as_dict() for name, p in self.phases.items()},
                "process_peak_bytes": self.process_peak_bytes, "peak_phase": self.peak_phase,
                "traced_depths": list(self.traced_depths), "notes": self.notes, "error": self.error}


def extrapolate(low: Peak, high: Peak, low_depth: int, high_depth: int, depth: int) -> Peak:
    """The peak at `depth` on the line through the peaks at two traced depths, label by label."""
    if low_depth == high_depth:
        return high
    scale = (depth - high_depth) / (high_depth - low_depth)
    parts = {}
    for key in set(low.parts) | set(high.parts):
        a, b = low.parts.get(key, 0), high.parts.get(key, 0)
        value = round(b + scale * (b - a))
        if value > 0:
            parts[key] = value
    return Peak(sum(parts.values()), parts)


def combine(traces: list[Trace], depth: int) -> tuple[dict, dict, dict, Peak]:
    """Region peaks, phase-call starts and ends, and the end state at `depth`, from one or two traces."""
    low, high = traces[0], traces[-1]

    def line(a: dict, b: dict) -> dict:
        keys = set(a) | set(b)
        return {k: extrapolate(a.get(k, b.get(k)), b.get(k, a.get(k)), low.depth, high.depth, depth) for k in keys}

    return (line(low.peaks, high.peaks), line(low.starts, high.starts), line(low.ends, high.ends),
            extrapolate(low.end, high.end, low.depth, high.depth, depth))


def static_total(peak: Peak) -> int:
    return sum(v for k, v in peak.parts.items() if k.split("/")[1] in STATIC_KINDS)


def by_role(parts: dict[str, int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for key, value in parts.items():
        role, kind = key.split("/")
        out[role][kind] = value
    return {role: {k: kinds[k] for k in KINDS if k in kinds} for role, kinds in out.items()}


def assemble(label: str, algo: AlgorithmConfig, traces: list[Trace], depth: int) -> AlgorithmEstimate:
    peaks, starts, ends, end = combine(traces, depth)
    per_call: dict[tuple[str, int], Peak] = {}
    for (phase, call, *_), peak in peaks.items():
        if peak.total > per_call.get((phase, call), Peak()).total:
            per_call[(phase, call)] = peak
    phases: dict[str, PhaseEstimate] = {}
    for (phase, call), peak in sorted(per_call.items()):
        start = starts[(phase, call)]
        rise = max(0, peak.total - start.total)
        created = max(0, static_total(ends[(phase, call)]) - static_total(start))
        known = phases.get(phase)
        if known is None:
            role = PHASE_ROLE.get(phase, "other")
            phases[phase] = PhaseEstimate(role if role in traces[-1].roles else "other", 1, peak.total, rise,
                                          max(0, rise - created), start.total, by_role(peak.parts))
            continue
        known.calls += 1
        known.rise_bytes = max(known.rise_bytes, rise)
        known.transient_bytes = max(known.transient_bytes, rise - created)
        if peak.total > known.peak_bytes:
            known.peak_bytes, known.start_bytes, known.by_role = peak.total, start.total, by_role(peak.parts)
    ordered = {p: phases[p] for p in sorted(phases, key=lambda p: (PHASE_ORDER + (p,)).index(p))}
    static = {role: {k: kinds.get(k, 0) for k in STATIC_KINDS} for role, kinds in by_role(end.parts).items()}
    for role in traces[-1].roles:
        static.setdefault(role, dict.fromkeys(STATIC_KINDS, 0))
    static = {role: {**kinds, "total": sum(kinds.values())} for role, kinds in static.items()
              if role in traces[-1].roles}
    return AlgorithmEstimate(label, algo.name, traces[-1].roles, static, ordered,
                             tuple(t.depth for t in traces))


def crossed_phases(traces: list[Trace]) -> list[str]:
    """A note for each phase where the two traced depths' peaks of one region are not the same
    moment: a label that holds less with a layer more (by over 1 MiB and 1% of the region), which no
    moment of an affine region does. The line through two such peaks multiplies their difference by
    the layers added (a gathering at one depth against a later token at the other once made 88 GiB
    of gathered weights out of 3.5)."""
    if len(traces) < 2:
        return []
    low, high = traces[0], traces[-1]
    found: dict[str, tuple[str, int, int]] = {}
    for key in sorted(set(low.peaks) & set(high.peaks), key=str):
        before, after = low.peaks[key], high.peaks[key]
        for label, held in before.parts.items():
            fall = held - after.parts.get(label, 0)
            if fall > max(2**20, 0.01 * before.total) and key[0] not in found:
                found[key[0]] = (label, held, after.parts.get(label, 0))
    return [f"{phase}: its peaks at {low.depth} and {high.depth} layers are different moments ({label} "
            f"{held / 2**20:,.1f} -> {then / 2**20:,.1f} MiB with a layer more), so its figure may be far off; "
            "--exact traces every layer" for phase, (label, held, then) in found.items()]


def trace_depths(depth: int, exact: bool) -> tuple[int, ...]:
    return (depth,) if exact or depth <= EXACT_UP_TO else TRACE_DEPTHS


def estimate_algorithm(suite: Suite, algo: AlgorithmConfig, config: Any, prompt_tokens: int,
                       device: torch.device, exact: bool = False,
                       prompt_lengths: dict[str, int] | None = None, ranks: int = 1,
                       pool: TracePool = SERIAL) -> AlgorithmEstimate:
    """Trace `algo` of `suite` on a model of `config` and predict each phase at the full depth
    (`prompt_lengths`: a run's own prompts, see `rlbench.estimate.simulate.trace_run`); `ranks` > 1:
    per rank, every role sharded with FSDP2 over that many ranks (`rlbench.estimate.ranks`); `pool`
    traces the depths side by side (`rlbench.estimate.parallel`)."""
    depth = config.num_hidden_layers
    try:
        traces = pool.run([(suite, algo, config, d, prompt_tokens, device, not exact, prompt_lengths, ranks)
                           for d in trace_depths(depth, exact)])
    except TraceFailed as failed:
        return AlgorithmEstimate(algo.label or algo.name, algo.name, (), {}, {}, (), error=str(failed))
    estimate = assemble(algo.label or algo.name, algo, traces, depth)
    estimate.notes += crossed_phases(traces)
    return estimate
