"""Each phase's time and memory over a run, accumulated call by call (what the summary reports)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from rlbench.measure.probing import PhaseMemory


@dataclass
class PhaseStats:
    """Accumulated time of each phase, and each probe's memory figures for it, over the run.

    A phase's rise (its transient) is net of the static state it created and left behind
    (`static_created`: gradients and optimizer state appear in the first update, and are counted in
    the roles' static bytes), so nothing is counted twice. `peak_call` keeps, per probe and phase,
    the call that reached the phase's peak: its peak, its transient and the static bytes held when
    it ended, which is what the reconciliation adds up. `steady_rise_bytes` is the largest rise over
    the calls after a phase's first: a first call also pages in library code and makes one-time
    heap (RSS on a CPU, not tensors), so this is the figure a tensor estimate meets; a phase called
    once has none.
    """

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    peak_bytes: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))  # probe -> phase -> max
    rise_bytes: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))  # probe -> phase -> max
    steady_rise_bytes: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))  # calls 2..n
    peak_call: dict[str, dict[str, dict[str, int]]] = field(default_factory=lambda: defaultdict(dict))
    notes: dict[str, str] = field(default_factory=dict)

    def add(self, phase: str, seconds: float, memory: dict[str, PhaseMemory] | None = None, static_created: int = 0,
            static_end: int = 0) -> None:
        self.seconds[phase] += seconds
        self.calls[phase] += 1
        for probe, mem in (memory or {}).items():
            peaks, rises = self.peak_bytes[probe], self.rise_bytes[probe]
            rise = max(0, mem.peak_bytes - mem.start_bytes - static_created)
            if mem.peak_bytes >= peaks.get(phase, 0):
                self.peak_call[probe][phase] = {"peak_bytes": mem.peak_bytes, "rise_bytes": rise,
                                                "static_bytes": static_end}
            peaks[phase] = max(peaks.get(phase, 0), mem.peak_bytes)
            rises[phase] = max(rises.get(phase, 0), rise)
            if self.calls[phase] > 1:
                steady = self.steady_rise_bytes[probe]
                steady[phase] = max(steady.get(phase, 0), rise)
            if mem.note:
                self.notes[f"{probe}/{phase}"] = mem.note
