"""What every memory probe shares: the per-phase record, the protocols, and a sampling thread.

Two protocols: `MemoryProbe` is one way of measuring (cpu, torch_cuda, nvml); `RunProbe` is what a
run measures its phases with and the summary reads (`memory.CompositeProbe` over one or more
memory probes, `NullProbe`, the estimator's tracer). Optional capabilities are declared, never
looked up: `anon_memory()` returns nothing for a probe that does not measure anonymous memory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class PhaseMemory:
    """What one probe saw during one phase; filled when the phase exits, even by an exception."""

    phase: str
    """Phase name, e.g. "generate", "update", "load/policy"."""
    probe: str
    """Name of the probe that measured it ("cpu", "torch_cuda", "nvml")."""
    method: str
    """How it was measured, precisely enough to judge the figures."""
    start_bytes: int = 0
    """Memory in use when the phase started."""
    peak_bytes: int = 0
    """Highest memory in use during the phase (absolute, not a rise)."""
    end_bytes: int = 0
    """Memory in use when the phase ended."""
    extra: dict[str, int] = field(default_factory=dict)
    """Probe-specific figures, e.g. reserved_peak_bytes, device_used_peak_bytes, rss_file_end_bytes."""
    note: str = ""
    """Anything that limits what the figures mean (a failed reading, a process NVML did not list)."""

    @property
    def peak_rise_bytes(self) -> int:
        """How far the phase's peak rose above its start."""
        return self.peak_bytes - self.start_bytes


class MemoryProbe(Protocol):
    """One way of measuring memory. `phase` yields a PhaseMemory that is filled at exit."""

    name: str
    method: str

    def phase(self, name: str) -> AbstractContextManager[PhaseMemory]: ...

    def snapshot(self) -> int:
        """Bytes in use now."""
        ...

    def process_peak_bytes(self) -> int:
        """Highest bytes in use seen so far (for sampling probes: over the samples taken)."""
        ...

    def describe(self) -> dict[str, Any]:
        """{"probe": name, "method": ..., "device": ...} for the report."""
        ...

    def anon_memory(self) -> dict[str, Any] | None:
        """Anonymous resident memory over the run (the cpu probe: per-phase peaks, process peak,
        baseline, rise), or None for a probe that does not measure it."""
        ...


class RunProbe(Protocol):
    """What `rlbench.train.Run` measures its phases and role loads with, and what the summary reads.
    `phase` yields {probe name: PhaseMemory}, filled when the phase exits (even by an exception)."""

    name: str
    primary: str  # the probe whose figures the report shows first
    measures_advantages: bool  # the advantages phase (pure math, no model) is measured too

    def phase(self, name: str) -> AbstractContextManager[dict[str, PhaseMemory]]: ...

    def loading(self, role: str) -> AbstractContextManager[None]:
        """Brackets the load of `role` (the estimator's tracer labels what is made there as its weights)."""
        ...

    def snapshot(self) -> dict[str, int]:
        """{probe name: bytes in use now}."""
        ...

    def process_peak_bytes(self) -> dict[str, int]: ...

    def anon_memory(self) -> dict[str, dict[str, Any]]:
        """{probe name: anonymous-memory figures} for the probes that measure them ({} when none does)."""
        ...

    def describe(self) -> dict[str, Any]: ...


class NullProbe:
    """What `rlbench.train.Run` measures its phases with when memory is not the point: it measures
    nothing (the baseline a probe's cost is timed against; tests and benchmarks that drive steps)."""

    name = primary = "none"
    measures_advantages = False

    @contextmanager
    def phase(self, name: str) -> Iterator[dict[str, PhaseMemory]]:
        yield {}

    def loading(self, role: str) -> AbstractContextManager[None]:
        return nullcontext()

    def snapshot(self) -> dict[str, int]:
        return {}

    def process_peak_bytes(self) -> dict[str, int]:
        return {}

    def anon_memory(self) -> dict[str, dict[str, Any]]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"probe": self.name, "primary": self.primary, "probes": []}


@contextmanager
def _measured_phase(probe: Any, name: str) -> Iterator[PhaseMemory]:
    """The phase protocol shared by the probes: `probe._begin(mem)`, the body, `probe._end(mem)` in a finally."""
    assert probe._open_phase is None, (
        f"{probe.name} probe: phase '{name}' started inside phase '{probe._open_phase}'; phases do not nest"
    )
    mem = PhaseMemory(phase=name, probe=probe.name, method=probe.method)
    probe._begin(mem)
    probe._open_phase = name
    try:
        yield mem
    finally:
        probe._open_phase = None
        try:
            probe._end(mem)
        except Exception as e:  # a failed reading must not hide the phase's own exception
            mem.note = _join_notes(mem.note, f"reading at phase end failed: {e!r}")


def _join_notes(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


class _Sampler:
    """Calls `read()` once at start, then every period_s on a daemon thread, and once at stop.

    Keeps the maximum of each key over all readings. A reading that raises on the thread stops
    the thread and is recorded in `error`; the readings before it stand.
    """

    def __init__(self, read: Callable[[], dict[str, int]], period_s: float, thread_name: str) -> None:
        self._read = read
        self._period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self.peaks: dict[str, int] = {}
        self.samples = 0
        self.error = ""

    def _take(self) -> dict[str, int]:
        reading = self._read()
        self.samples += 1
        for key, value in reading.items():
            self.peaks[key] = max(self.peaks.get(key, value), value)
        return reading

    def start(self) -> dict[str, int]:
        first = self._take()
        self._thread.start()
        return first

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            try:
                self._take()
            except Exception as e:
                self.error = f"sampling thread stopped: {e!r}"
                return

    def stop(self) -> dict[str, int]:
        """Stops and joins the thread, then takes a last reading ({} if it fails)."""
        self._stop.set()
        self._thread.join()
        try:
            return self._take()
        except Exception as e:
            self.error = _join_notes(self.error, f"last reading failed: {e!r}")
            return {}


# ----------------------------------------------------------------------------------------- cpu
