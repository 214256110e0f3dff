"""The `cpu` probe: exact phase peaks of this process's resident memory from /proc (Linux).

See rlbench/measure/memory.py for how it reads memory and why workers start with CPU_WORKER_ENV.

Beside the total (VmHWM/VmRSS: anonymous + file-backed + shared pages) the probe reports the
anonymous part alone (RssAnon: heap, tensors, stacks): what the code allocates, without the pages
of library files and memory-mapped weights that the kernel keeps resident or drops depending on
the page cache and on how the libraries were installed. The kernel keeps no peak of RssAnon, so a
thread samples it every period_ms (and once at phase start and end), like the RSS fallback; a peak
shorter than the period is missed. `anon_memory()` gives the per-phase peaks, the process peak and
the first snapshot (the worker's reading before any model is loaded: the run's baseline).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import Any

from rlbench.measure.probing import PhaseMemory, _join_notes, _measured_phase, _Sampler

PROC_CLEAR_REFS = "/proc/self/clear_refs"
PROC_STATUS = "/proc/self/status"


def read_proc_status() -> dict[str, int]:
    """The kB fields of /proc/self/status (VmRSS, VmHWM, RssAnon, RssFile, RssShmem, ...) in bytes."""
    fields = {}
    with open(PROC_STATUS) as status:
        for line in status:
            key, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                fields[key] = int(parts[0]) * 1024
    return fields


def _proc_status_readable() -> bool:
    try:
        return "VmHWM" in read_proc_status()
    except OSError:
        return False


HEAP_THRESHOLDS = {"fast": "1048576", "exact": "65536"}
"""glibc's mmap threshold for each `probe_heap` setting (see rlbench/measure/memory.py)."""


def cpu_worker_env(heap: str = "fast") -> dict[str, str]:
    """Environment for worker processes whose RSS the cpu probe can trust, for a suite's
    `probe_heap` (fast: 1 MiB threshold; exact: 64 KiB; see the module docstring)."""
    return {"MALLOC_MMAP_THRESHOLD_": HEAP_THRESHOLDS[heap]}


CPU_WORKER_ENV: dict[str, str] = cpu_worker_env("fast")
"""The default worker environment (`probe_heap: fast`)."""


def release_free_heap() -> bool:
    """glibc's malloc_trim(0): free heap pages of every arena go back to the kernel. False where the
    C library is not glibc (nothing to call)."""
    global _malloc_trim
    if _malloc_trim is None:
        import ctypes
        import ctypes.util
        import platform

        if platform.libc_ver()[0] != "glibc":
            _malloc_trim = False
        else:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    if _malloc_trim is False:
        return False
    _malloc_trim(0)
    return True


_malloc_trim = None  # the C function once looked up, False where there is none


def reset_peak_rss() -> bool:
    """Writes "5" to /proc/self/clear_refs (VmHWM := current RSS); False where that is not allowed."""
    try:
        with open(PROC_CLEAR_REFS, "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


class CpuProbe:
    """Resident memory of this process: exact peak via clear_refs + VmHWM, or psutil sampling."""

    name = "cpu"

    def __init__(self, period_ms: float = 5.0, use_clear_refs: bool | None = None,
                 release_heap: bool = True, heap: str = "fast") -> None:
        """`use_clear_refs=None` tries clear_refs and falls back to sampling; False forces sampling.
        `release_heap=False` skips malloc_trim at phase start (to show what it is for). `heap`: the
        suite's `probe_heap`, whose mmap threshold the process must have been started with
        (`cpu_worker_env(heap)`: glibc reads it at start-up); the method says whether it was."""
        assert period_ms > 0, f"period_ms must be > 0, got {period_ms}"
        self.period_ms = period_ms
        self.release_heap = release_heap and release_free_heap()
        self._open_phase: str | None = None
        self._sampler: _Sampler | None = None
        self._has_status = _proc_status_readable()
        # VmHWM so far is the process peak until now; read it before any reset loses it.
        self._process_peak = read_proc_status()["VmHWM"] if self._has_status else 0
        # RssAnon: sampled per phase (no kernel peak counter); None where /proc/self/status is unreadable.
        self._anon_phase_peaks: dict[str, int] = {}
        self._has_anon = self._has_status and "RssAnon" in read_proc_status()
        self._anon_process_peak = read_proc_status()["RssAnon"] if self._has_anon else 0
        self._anon_baseline: int | None = None
        self._anon_sampler: _Sampler | None = None
        if use_clear_refs is None:
            use_clear_refs = self._has_status and reset_peak_rss()
        self.uses_clear_refs = use_clear_refs
        if use_clear_refs:
            method = (
                "VmHWM from /proc/self/status after writing 5 to /proc/self/clear_refs at phase start "
                "(exact peak of resident pages: anonymous + file-backed + shared)"
            )
        else:
            method = (
                f"max of RSS sampled by a psutil thread every {period_ms:g} ms and at phase start and end "
                "(clear_refs not writable; peaks shorter than the period are missed)"
            )
        threshold = os.environ.get("MALLOC_MMAP_THRESHOLD_")
        if threshold == HEAP_THRESHOLDS[heap]:
            method += f"; process started with MALLOC_MMAP_THRESHOLD_={threshold} (probe_heap {heap})"
        else:
            method += (f"; MALLOC_MMAP_THRESHOLD_ is {'unset' if threshold is None else repr(threshold)} "
                       f"(not {HEAP_THRESHOLDS[heap]}, probe_heap {heap}): freed large tensors may stay resident "
                       "within a phase, so peaks can read high")
        if self.release_heap:
            method += "; free heap handed back to the kernel (glibc malloc_trim) at phase start"
        else:
            method += "; free heap not released at phase start (freed memory may stay resident and read high)"
        self.method = method

    def phase(self, name: str) -> AbstractContextManager[PhaseMemory]:
        return _measured_phase(self, name)

    def _rss_reading(self) -> dict[str, int]:
        """The sampler thread's reading: RSS as it is (trimming the heap every period would be work
        on the measured phase's own time)."""
        return {"rss": self._rss()}

    def _anon_reading(self) -> dict[str, int]:
        return {"anon": read_proc_status()["RssAnon"]}

    def _begin(self, mem: PhaseMemory) -> None:
        if self.release_heap:
            release_free_heap()
        if self._has_anon:
            self._anon_sampler = _Sampler(self._anon_reading, self.period_ms / 1000, "rlbench-cpu-anon-sampler")
            mem.extra["rss_anon_start_bytes"] = self._anon_sampler.start()["anon"]
        if self.uses_clear_refs:
            self._process_peak = max(self._process_peak, read_proc_status()["VmHWM"])
            assert reset_peak_rss(), f"cannot write {PROC_CLEAR_REFS}; build CpuProbe(use_clear_refs=False)"
            mem.start_bytes = read_proc_status()["VmRSS"]
        else:
            self._sampler = _Sampler(self._rss_reading, self.period_ms / 1000, "rlbench-cpu-rss-sampler")
            mem.start_bytes = self._sampler.start()["rss"]

    def _end(self, mem: PhaseMemory) -> None:
        if self.uses_clear_refs:
            status = read_proc_status()
            mem.peak_bytes, mem.end_bytes = status["VmHWM"], status["VmRSS"]
        else:
            assert self._sampler is not None
            last = self._sampler.stop()
            mem.peak_bytes = self._sampler.peaks["rss"]
            mem.end_bytes = last.get("rss", 0)
            mem.extra["samples"] = self._sampler.samples
            mem.note = _join_notes(mem.note, self._sampler.error)
            self._sampler = None
            status = read_proc_status() if self._has_status else {}
        for key, extra_key in (
            ("RssAnon", "rss_anon_end_bytes"),
            ("RssFile", "rss_file_end_bytes"),
            ("RssShmem", "rss_shmem_end_bytes"),
        ):
            if key in status:
                mem.extra[extra_key] = status[key]
        self._process_peak = max(self._process_peak, mem.peak_bytes)
        # After the total is read: the sampler thread's exit gives back a page of its stack, which
        # would otherwise put the phase's VmHWM a page below its start.
        if self._anon_sampler is not None:
            sampler, self._anon_sampler = self._anon_sampler, None
            sampler.stop()
            if "anon" in sampler.peaks:
                peak = sampler.peaks["anon"]
                mem.extra["rss_anon_peak_bytes"] = peak
                self._anon_phase_peaks[mem.phase] = max(self._anon_phase_peaks.get(mem.phase, 0), peak)
                self._anon_process_peak = max(self._anon_process_peak, peak)
            mem.note = _join_notes(mem.note, sampler.error and f"RssAnon {sampler.error}")

    def snapshot(self) -> int:
        """Current RSS, after handing the free heap back (so it counts live memory). The first
        snapshot's RssAnon is kept as the anonymous baseline (see `anon_memory`)."""
        if self.release_heap:
            release_free_heap()
        if self._has_anon:
            anon = read_proc_status()["RssAnon"]
            self._anon_process_peak = max(self._anon_process_peak, anon)
            if self._anon_baseline is None:
                self._anon_baseline = anon
        return self._rss()

    def anon_memory(self) -> dict[str, Any] | None:
        """Anonymous resident memory (RssAnon) of this process, sampled every period_ms: the peak of
        each phase (the highest of its calls), the process peak, the first snapshot (the baseline)
        and the peak's rise above it. None where /proc/self/status cannot be read."""
        if not self._has_anon:
            return None
        baseline = self._anon_baseline or 0
        peak = max(self._anon_process_peak, read_proc_status()["RssAnon"])
        return {"method": f"RssAnon from /proc/self/status sampled every {self.period_ms:g} ms and at phase "
                          "start and end (anonymous pages only: heap, tensors, stacks; no file-backed pages)",
                "baseline_bytes": baseline, "process_peak_bytes": peak, "rise_bytes": peak - baseline,
                "phase_peak_bytes": dict(self._anon_phase_peaks)}

    def _rss(self) -> int:
        if self._has_status:
            return read_proc_status()["VmRSS"]
        import psutil

        return int(psutil.Process().memory_info().rss)

    def process_peak_bytes(self) -> int:
        # Without clear_refs VmHWM is never reset, so it alone is the process peak.
        now = read_proc_status()["VmHWM"] if self._has_status else 0
        return max(self._process_peak, now)

    def describe(self) -> dict[str, Any]:
        from rlbench.measure.flops import cpu_model_name

        return {"probe": self.name, "method": self.method, "device": f"cpu: {cpu_model_name()}"}


# ----------------------------------------------------------------------------------- torch_cuda
