"""The `cpu` probe: exact phase peaks of this process's resident memory from /proc (Linux), its
child processes' included.

See rlbench/measure/memory.py for how it reads memory and why workers start with CPU_WORKER_ENV.

Beside the total (VmHWM/VmRSS: anonymous + file-backed + shared pages) the probe reports the
anonymous part alone (RssAnon: heap, tensors, stacks): what the code allocates, without the pages
of library files and memory-mapped weights that the kernel keeps resident or drops depending on
the page cache and on how the libraries were installed. The kernel keeps no peak of RssAnon, so a
thread samples it every period_ms (and once at phase start and end), like the RSS fallback; a peak
shorter than the period is missed. `anon_memory()` gives the per-phase peaks, the process peak and
the first snapshot (the worker's reading before any model is loaded: the run's baseline).

The process tree: an engine such as vLLM runs its engine core and worker in child processes, which
hold its weight copy, KV cache and workspace. Every reading adds the descendants of this process
(listed again at each phase start and end): at phase start each one's peak is reset through its
own /proc/<pid>/clear_refs, at phase end its VmHWM is read, so a phase's peak is this process's
peak plus the sum of the children's peaks (an upper bound of the tree's simultaneous peak: the
children's peaks may fall at different moments; a child that exits within the phase is not
counted). The children's share is kept apart (`children_memory()`: per phase, the call that reached
the phase's peak, its children's start, peak and end bytes, and each child's resident bytes at the
last phase end by process name), for the summary to give it to the rollout engine's role.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import Any

from rlbench.measure.probing import PhaseMemory, _join_notes, _measured_phase, _Sampler

PROC_CLEAR_REFS = "/proc/self/clear_refs"
PROC_STATUS = "/proc/self/status"


def read_proc_status(pid: int | str = "self") -> dict[str, int]:
    """The kB fields of /proc/<pid>/status (VmRSS, VmHWM, RssAnon, RssFile, RssShmem, ...) in bytes."""
    fields = {}
    with open(PROC_STATUS if pid == "self" else f"/proc/{pid}/status") as status:
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


def reset_peak_rss(pid: int | str = "self") -> bool:
    """Writes "5" to /proc/<pid>/clear_refs (VmHWM := current RSS); False where that is not allowed."""
    try:
        with open(PROC_CLEAR_REFS if pid == "self" else f"/proc/{pid}/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def descendant_pids() -> list[int]:
    """Every live descendant of this process (children, their children, ...)."""
    import psutil

    try:
        return [child.pid for child in psutil.Process().children(recursive=True)]
    except psutil.Error:
        return []


class ChildProcesses:
    """The descendants of this process and their /proc readings (each field summed over them)."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.names: dict[int, str] = {}

    def refresh(self) -> list[int]:
        """List the descendants again (engines start theirs while loading); returns the pids."""
        self.pids = descendant_pids()
        return self.pids

    def statuses(self) -> dict[int, dict[str, int]]:
        """/proc/<pid>/status of each listed child still alive."""
        out = {}
        for pid in self.pids:
            try:
                out[pid] = read_proc_status(pid)
            except (OSError, ValueError):
                continue  # exited
        return out

    def total(self, field: str) -> int:
        return sum(status.get(field, 0) for status in self.statuses().values())

    def reset_peaks(self) -> list[int]:
        """Reset each child's VmHWM; returns the pids whose clear_refs could not be written."""
        return [pid for pid in self.pids if not reset_peak_rss(pid)]

    def resident_by_name(self) -> dict[str, int]:
        """VmRSS of each live child by process name (pid appended where two share a name)."""
        import psutil

        out: dict[str, int] = {}
        for pid, status in self.statuses().items():
            if pid not in self.names:
                try:
                    self.names[pid] = psutil.Process(pid).name()
                except psutil.Error:
                    self.names[pid] = str(pid)
            name = self.names[pid] if self.names[pid] not in out else f"{self.names[pid]} ({pid})"
            out[name] = status.get("VmRSS", 0)
        return out


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
        self.children = ChildProcesses()
        self._children_calls: dict[str, dict[str, int]] = {}  # phase -> the peak call's children figures
        self._children_start = 0
        self._children_seen = False
        self._children_resident: dict[str, int] = {}
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
        method += ("; child processes (an engine's) added: each one's VmHWM after its own clear_refs at phase start, "
                   "summed (an upper bound of the tree's simultaneous peak)")
        self.method = method

    def phase(self, name: str) -> AbstractContextManager[PhaseMemory]:
        return _measured_phase(self, name)

    def _rss_reading(self) -> dict[str, int]:
        """The sampler thread's reading: RSS of the tree as it is (trimming the heap every period would
        be work on the measured phase's own time)."""
        return {"rss": self._rss() + self.children.total("VmRSS")}

    def _anon_reading(self) -> dict[str, int]:
        return {"anon": read_proc_status()["RssAnon"] + self.children.total("RssAnon")}

    def _begin(self, mem: PhaseMemory) -> None:
        if self.release_heap:
            release_free_heap()
        if self.children.refresh():
            self._process_peak = max(self._process_peak, self._tree_peak_so_far())
            self._children_start = self.children.total("VmRSS")
            unreset = self.children.reset_peaks() if self.uses_clear_refs else []
            if unreset:
                mem.note = _join_notes(mem.note, f"clear_refs of child processes {unreset} not writable: their "
                                                 "peaks count from earlier than this phase")
        else:
            self._children_start = 0
        if self._has_anon:
            self._anon_sampler = _Sampler(self._anon_reading, self.period_ms / 1000, "rlbench-cpu-anon-sampler")
            mem.extra["rss_anon_start_bytes"] = self._anon_sampler.start()["anon"]
        if self.uses_clear_refs:
            self._process_peak = max(self._process_peak, read_proc_status()["VmHWM"])
            assert reset_peak_rss(), f"cannot write {PROC_CLEAR_REFS}; build CpuProbe(use_clear_refs=False)"
            mem.start_bytes = read_proc_status()["VmRSS"] + self._children_start
        else:
            self._sampler = _Sampler(self._rss_reading, self.period_ms / 1000, "rlbench-cpu-rss-sampler")
            mem.start_bytes = self._sampler.start()["rss"]
        if self.children.pids:
            mem.extra["children_start_bytes"] = self._children_start

    def _end(self, mem: PhaseMemory) -> None:
        started_with = set(self.children.pids)
        self.children.refresh()
        children = self.children.statuses()
        children_peak = sum(c.get("VmHWM", 0) for c in children.values())
        children_end = sum(c.get("VmRSS", 0) for c in children.values())
        if self.uses_clear_refs:
            status = read_proc_status()
            mem.peak_bytes, mem.end_bytes = status["VmHWM"] + children_peak, status["VmRSS"] + children_end
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
        if children or started_with:
            self._children_seen = True
            figures = {"start_bytes": self._children_start, "peak_bytes": children_peak, "end_bytes": children_end,
                       "processes": len(children), "total_peak_bytes": mem.peak_bytes}
            mem.extra.update(children_peak_bytes=children_peak, children_end_bytes=children_end)
            if mem.peak_bytes >= self._children_calls.get(mem.phase, {}).get("total_peak_bytes", 0):
                self._children_calls[mem.phase] = figures  # the call the run's phase peak comes from
            self._children_resident = self.children.resident_by_name()
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
        """Current RSS of the tree, after handing the free heap back (so it counts live memory). The
        first snapshot's RssAnon is kept as the anonymous baseline (see `anon_memory`)."""
        if self.release_heap:
            release_free_heap()
        self.children.refresh()
        if self._has_anon:
            anon = read_proc_status()["RssAnon"] + self.children.total("RssAnon")
            self._anon_process_peak = max(self._anon_process_peak, anon)
            if self._anon_baseline is None:
                self._anon_baseline = anon
        return self._rss() + self.children.total("VmRSS")

    def children_memory(self) -> dict[str, Any] | None:
        """Resident memory of the child processes (an engine's), None where there were none: per phase,
        the call that reached the phase's peak (children's start, peak and end bytes, how many), and
        each child's VmRSS at the last phase end by process name."""
        if not self._children_seen:
            return None
        calls = {phase: {k: v for k, v in figures.items() if k != "total_peak_bytes"}
                 for phase, figures in self._children_calls.items()}
        return {"method": "VmRSS and VmHWM of every descendant process from /proc/<pid>/status, peaks reset "
                          "per phase through /proc/<pid>/clear_refs, summed over the processes",
                "peak_call": calls, "resident_bytes": dict(self._children_resident)}

    def _tree_peak_so_far(self) -> int:
        """This process's VmHWM plus its children's (since their last reset): an upper bound of the tree's peak."""
        own = read_proc_status()["VmHWM"] if self._has_status else 0
        return own + self.children.total("VmHWM")

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
        # Without clear_refs VmHWM is never reset, so it alone is the process peak (children's added).
        self.children.refresh()
        now = self._tree_peak_so_far() if self._has_status else 0
        return max(self._process_peak, now)

    def describe(self) -> dict[str, Any]:
        from rlbench.measure.flops import cpu_model_name

        return {"probe": self.name, "method": self.method, "device": f"cpu: {cpu_model_name()}"}


# ----------------------------------------------------------------------------------- torch_cuda
