"""Memory probes: how much memory each phase of a run (generate, score, update, ...) peaked at.

Usage (the runner's view):

    probe = catalog.resolve_probe("auto", period_ms=5)   # always a CompositeProbe
    with probe.phase("update") as by_probe:         # {probe name: PhaseMemory}
        train_step()
    by_probe["cpu"].peak_bytes, by_probe["cpu"].method

Every PhaseMemory is filled in a `finally` when its phase exits, so a phase that raises (an
out-of-memory error included) still reports what it reached. Bytes are absolute figures for the
process or device, not relative to the phase start (`peak_rise_bytes` gives the rise).

Probes (listed in rlbench/catalog.py; each entry is a factory `(period_ms) -> probe`):

- `cpu`: resident memory (RSS) of this process. At phase start it writes "5" to
  /proc/self/clear_refs, which resets the kernel's peak-RSS counter VmHWM to the current RSS; at
  phase end it reads VmHWM from /proc/self/status: an exact peak with no sampling. VmHWM counts every
  resident page: anonymous memory, file-backed pages (memory-mapped safetensors weights, shared
  library code as it is paged in) and shared memory; the end-of-phase split is in `extra`.
  glibc keeps freed heap memory resident, and its mmap threshold grows with use (up to 32 MiB), so
  freed tensors would stay counted. Two things make the figures the memory that is alive: worker
  processes start with CPU_WORKER_ENV (MALLOC_MMAP_THRESHOLD_=1048576: a fixed threshold, every
  allocation of 1 MiB or more is its own mmap and goes back to the kernel when freed), and before
  each reset (and each snapshot) the probe calls glibc's `malloc_trim(0)`, which hands the free
  pages of smaller allocations back too. Measured: a Llama train step's rise reads 84.2 MB against
  82.4 MB of tensors in PyTorch's profiler (110 MB with glibc's defaults, 102 MB with a 4 MiB
  threshold). A 64 KiB threshold is as exact but makes every medium tensor a fresh mmap: 1.00 s per
  quickstart RL step against 0.56 s with 1 MiB (0.54 s with no threshold), and 27 s against 16 s
  to evaluate 4,096 problems, so it would halve the throughput the report shows.
  Where clear_refs is not writable (not Linux, some sandboxes) a thread samples RSS with psutil
  every period_ms instead, which misses peaks shorter than the period. `method` says which was
  used, whether the variable was set and whether the free heap was released.
- `torch_cuda`: PyTorch's caching allocator: reset_peak_memory_stats at phase start,
  max_memory_allocated (peak_bytes) and max_memory_reserved (extra) at phase end. Sees only the
  memory PyTorch allocated, not the CUDA context or other libraries.
- `nvml`: NVIDIA's management library (package nvidia-ml-py): a thread samples, every period_ms
  and once at phase start and end, this process's used GPU memory and the whole device's used
  memory. Sees what PyTorch does not own (the CUDA context, vLLM's KV cache, NCCL buffers), but
  misses peaks shorter than the period.
- `auto`: nvml + torch_cuda on a CUDA machine (nvml listed first: it sees everything), cpu otherwise.

Simplifications: phases of one probe do not nest (each phase start resets the peak counters), and
a process holds one cpu probe (clear_refs resets the peak of the whole process).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from rlbench.errors import UserError

PROC_CLEAR_REFS = "/proc/self/clear_refs"
PROC_STATUS = "/proc/self/status"

NVML_MISSING_MESSAGE = "nvml probe needs nvidia-ml-py (pip install nvidia-ml-py)"
NO_DRIVER_MESSAGE = "no NVIDIA driver found: the nvml probe needs a GPU; use probe: cpu"


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


CPU_WORKER_ENV: dict[str, str] = {"MALLOC_MMAP_THRESHOLD_": "1048576"}
"""Environment for worker processes whose RSS the cpu probe can trust (see the module docstring)."""


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
                 release_heap: bool = True) -> None:
        """`use_clear_refs=None` tries clear_refs and falls back to sampling; False forces sampling.
        `release_heap=False` skips malloc_trim at phase start (to show what it is for)."""
        assert period_ms > 0, f"period_ms must be > 0, got {period_ms}"
        self.period_ms = period_ms
        self.release_heap = release_heap and release_free_heap()
        self._open_phase: str | None = None
        self._sampler: _Sampler | None = None
        self._has_status = _proc_status_readable()
        # VmHWM so far is the process peak until now; read it before any reset loses it.
        self._process_peak = read_proc_status()["VmHWM"] if self._has_status else 0
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
        if threshold == CPU_WORKER_ENV["MALLOC_MMAP_THRESHOLD_"]:
            method += f"; process started with MALLOC_MMAP_THRESHOLD_={threshold}"
        else:
            method += (f"; MALLOC_MMAP_THRESHOLD_ is {'unset' if threshold is None else repr(threshold)} "
                       f"(not {CPU_WORKER_ENV['MALLOC_MMAP_THRESHOLD_']}): freed large tensors may stay resident "
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

    def _begin(self, mem: PhaseMemory) -> None:
        if self.release_heap:
            release_free_heap()
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

    def snapshot(self) -> int:
        """Current RSS, after handing the free heap back (so it counts live memory)."""
        if self.release_heap:
            release_free_heap()
        return self._rss()

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


class TorchCudaProbe:
    """PyTorch's CUDA caching allocator: peak allocated and reserved bytes per phase.

    `cuda` is the torch.cuda module (the default) or a stand-in with the same functions:
    is_available, current_device, get_device_name, reset_peak_memory_stats, memory_allocated,
    max_memory_allocated, memory_reserved, max_memory_reserved.
    """

    name = "torch_cuda"
    method = (
        "torch.cuda.reset_peak_memory_stats at phase start; max_memory_allocated (peak) and "
        "max_memory_reserved (extra) read at phase end in a finally; counts PyTorch's allocations only, "
        "not the CUDA context or other libraries"
    )

    def __init__(self, period_ms: float = 5.0, cuda: Any = None, device: Any = None) -> None:
        """`period_ms` is unused (the allocator keeps exact peaks); it keeps the factory signature."""
        if cuda is None:
            import torch

            cuda = torch.cuda
        if not cuda.is_available():
            raise UserError(
                "the torch_cuda probe needs a CUDA GPU (torch.cuda.is_available() is False); use probe: cpu"
            )
        self.cuda = cuda
        self.device = cuda.current_device() if device is None else device
        self._open_phase: str | None = None
        self._process_peak = 0

    def phase(self, name: str) -> AbstractContextManager[PhaseMemory]:
        return _measured_phase(self, name)

    def _begin(self, mem: PhaseMemory) -> None:
        self._process_peak = max(self._process_peak, self.cuda.max_memory_allocated(self.device))
        self.cuda.reset_peak_memory_stats(self.device)
        mem.start_bytes = self.cuda.memory_allocated(self.device)
        mem.extra["reserved_start_bytes"] = self.cuda.memory_reserved(self.device)

    def _end(self, mem: PhaseMemory) -> None:
        mem.peak_bytes = self.cuda.max_memory_allocated(self.device)
        mem.end_bytes = self.cuda.memory_allocated(self.device)
        mem.extra["reserved_peak_bytes"] = self.cuda.max_memory_reserved(self.device)
        mem.extra["reserved_end_bytes"] = self.cuda.memory_reserved(self.device)
        self._process_peak = max(self._process_peak, mem.peak_bytes)

    def snapshot(self) -> int:
        return int(self.cuda.memory_allocated(self.device))

    def process_peak_bytes(self) -> int:
        return max(self._process_peak, self.cuda.max_memory_allocated(self.device))

    def describe(self) -> dict[str, Any]:
        return {
            "probe": self.name,
            "method": self.method,
            "device": str(self.cuda.get_device_name(self.device)),
        }


# ----------------------------------------------------------------------------------------- nvml


def _import_pynvml() -> Any:
    try:
        import pynvml
    except ImportError as e:
        raise UserError(NVML_MISSING_MESSAGE) from e
    return pynvml


def _nvml_device_handle(nvml: Any, device_index: int | None) -> Any:
    """The NVML handle of `device_index`, else of the first GPU in CUDA_VISIBLE_DEVICES, else GPU 0.

    NVML numbers GPUs physically; CUDA_VISIBLE_DEVICES renumbers them for CUDA, so CUDA's device 0
    is the first entry there (an index or a GPU-/MIG- UUID).
    """
    if device_index is not None:
        return nvml.nvmlDeviceGetHandleByIndex(device_index)
    first_visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    if first_visible.isdigit():
        return nvml.nvmlDeviceGetHandleByIndex(int(first_visible))
    if first_visible.startswith(("GPU-", "MIG-")):
        return nvml.nvmlDeviceGetHandleByUUID(first_visible)
    return nvml.nvmlDeviceGetHandleByIndex(0)


def _process_tree_pids() -> set[int]:
    """This process and its descendants: an engine such as vLLM may hold GPU memory in a child."""
    pid = os.getpid()
    try:
        import psutil

        return {pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))}
    except Exception:  # noqa: BLE001 - psutil missing or the process table unreadable: own pid only
        return {pid}


class NvmlProbe:
    """Used GPU memory of this process and of its device, sampled through NVML on a thread.

    `nvml` is the pynvml module (the default, imported when the probe is built) or a stand-in with
    nvmlInit, nvmlDeviceGetHandleByIndex, nvmlDeviceGetHandleByUUID, nvmlDeviceGetName,
    nvmlDeviceGetMemoryInfo, nvmlDeviceGetComputeRunningProcesses and the NVMLError classes.
    peak/start/end are this process's bytes (entries of nvmlDeviceGetComputeRunningProcesses whose
    pid is os.getpid() or one of its descendants, such as a vLLM engine process; an entry whose
    usedGpuMemory is None is skipped); the device's used bytes
    are in extra. In a container with its own PID namespace NVML reports host PIDs, the process
    is never listed, and the note says so: then read extra["device_used_peak_bytes"].
    """

    name = "nvml"

    def __init__(self, period_ms: float = 5.0, nvml: Any = None, device_index: int | None = None) -> None:
        assert period_ms > 0, f"period_ms must be > 0, got {period_ms}"
        self.nvml = _import_pynvml() if nvml is None else nvml
        no_driver = tuple(
            getattr(self.nvml, error)
            for error in ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded")
            if hasattr(self.nvml, error)
        )
        try:
            self.nvml.nvmlInit()
        except no_driver as e:
            raise UserError(NO_DRIVER_MESSAGE) from e
        except self.nvml.NVMLError as e:
            raise UserError(f"nvml probe: NVML did not start ({e}); use probe: torch_cuda or cpu") from e
        try:
            self._handle = _nvml_device_handle(self.nvml, device_index)
        except self.nvml.NVMLError as e:
            which = device_index if device_index is not None else os.environ.get("CUDA_VISIBLE_DEVICES", "0")
            raise UserError(f"nvml probe: cannot open GPU {which}: {e}") from e
        self.period_ms = period_ms
        self.method = (
            f"NVML sampled by a thread every {period_ms:g} ms and at phase start and end: this process's "
            "used GPU memory (nvmlDeviceGetComputeRunningProcesses, own pid and child processes) as peak/start/end, the device's "
            "used memory (nvmlDeviceGetMemoryInfo.used) in extra; includes the CUDA context and memory "
            "PyTorch does not own; peaks shorter than the period are missed"
        )
        self._open_phase: str | None = None
        self._sampler: _Sampler | None = None
        self._process_peak = 0

    def phase(self, name: str) -> AbstractContextManager[PhaseMemory]:
        return _measured_phase(self, name)

    def _reading(self) -> dict[str, int]:
        """{"device_used": bytes, "process": bytes}; "process" only when NVML lists this pid with a figure."""
        reading = {"device_used": int(self.nvml.nvmlDeviceGetMemoryInfo(self._handle).used)}
        pids = _process_tree_pids()
        used = [
            int(p.usedGpuMemory)
            for p in self.nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
            if p.pid in pids and p.usedGpuMemory is not None
        ]
        if used:
            reading["process"] = sum(used)
        return reading

    def _begin(self, mem: PhaseMemory) -> None:
        self._sampler = _Sampler(self._reading, self.period_ms / 1000, "rlbench-nvml-sampler")
        first = self._sampler.start()
        mem.start_bytes = first.get("process", 0)
        mem.extra["device_used_start_bytes"] = first["device_used"]

    def _end(self, mem: PhaseMemory) -> None:
        assert self._sampler is not None
        sampler, self._sampler = self._sampler, None
        last = sampler.stop()
        mem.peak_bytes = sampler.peaks.get("process", 0)
        mem.end_bytes = last.get("process", 0)
        mem.extra["device_used_peak_bytes"] = sampler.peaks.get("device_used", 0)
        if "device_used" in last:
            mem.extra["device_used_end_bytes"] = last["device_used"]
        mem.extra["samples"] = sampler.samples
        not_listed = (
            ""
            if "process" in sampler.peaks
            else "this process was never listed with a memory figure by NVML during the phase (no CUDA "
            "context yet, or a container PID namespace): process figures are 0, see device_used_peak_bytes"
        )
        mem.note = _join_notes(mem.note, sampler.error, not_listed)
        self._process_peak = max(self._process_peak, mem.peak_bytes)

    def snapshot(self) -> int:
        return self._reading().get("process", 0)

    def process_peak_bytes(self) -> int:
        return max(self._process_peak, self.snapshot())

    def describe(self) -> dict[str, Any]:
        name = self.nvml.nvmlDeviceGetName(self._handle)
        device = name.decode() if isinstance(name, bytes) else str(name)
        return {"probe": self.name, "method": self.method, "device": device}


# ------------------------------------------------------------------------------------ composite


class CompositeProbe:
    """Several probes measuring the same phases. `phase` yields {probe name: PhaseMemory}.

    The first probe is the primary one: the report shows its figures first (nvml on a GPU, since
    it sees all of the process's GPU memory; cpu otherwise). A single probe is wrapped too, so the
    runner has one API whatever the suite chose.
    """

    def __init__(self, name: str, probes: list[MemoryProbe]) -> None:
        names = [p.name for p in probes]
        assert probes and len(set(names)) == len(names), f"composite probe needs distinct probes, got {names}"
        self.name = name
        self.probes = list(probes)

    @property
    def primary(self) -> str:
        return self.probes[0].name

    @contextmanager
    def phase(self, name: str) -> Iterator[dict[str, PhaseMemory]]:
        with ExitStack() as stack:  # every sub-phase that started is ended, in reverse order
            yield {p.name: stack.enter_context(p.phase(name)) for p in self.probes}

    def snapshot(self) -> dict[str, int]:
        return {p.name: p.snapshot() for p in self.probes}

    def process_peak_bytes(self) -> dict[str, int]:
        return {p.name: p.process_peak_bytes() for p in self.probes}

    def describe(self) -> dict[str, Any]:
        return {"probe": self.name, "primary": self.primary, "probes": [p.describe() for p in self.probes]}


# ------------------------------------------------------------------------- factories (see the catalog)


# Every factory returns a CompositeProbe (one probe or several behind one interface).


def cpu_probe(period_ms: float) -> CompositeProbe:
    return CompositeProbe("cpu", [CpuProbe(period_ms)])


def torch_cuda_probe(period_ms: float) -> CompositeProbe:
    return CompositeProbe("torch_cuda", [TorchCudaProbe(period_ms)])


def nvml_probe(period_ms: float) -> CompositeProbe:
    return CompositeProbe("nvml", [NvmlProbe(period_ms)])


def auto_probe(period_ms: float) -> CompositeProbe:
    import torch

    if not torch.cuda.is_available():
        return CompositeProbe("auto", [CpuProbe(period_ms)])
    probes: list[MemoryProbe] = []
    try:
        probes.append(NvmlProbe(period_ms))
    except UserError:
        pass  # no nvidia-ml-py or no driver visible to NVML: torch_cuda still measures
    probes.append(TorchCudaProbe(period_ms))
    return CompositeProbe("auto", probes)


def available_probe_names() -> list[str]:
    """Names of the probes that can be built on this machine (cpu and auto always)."""
    import torch

    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names.append("torch_cuda")
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        names.append("nvml")
    except Exception:
        pass  # not installed, or no driver
    return sorted(names)
