"""The GPU probes: `torch_cuda` (PyTorch's allocator statistics) and `nvml` (NVIDIA's management
library, sampled on a thread). Both import their libraries only when built."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import Any

from rlbench.errors import UserError
from rlbench.measure.probing import PhaseMemory, _join_notes, _measured_phase, _Sampler

NVML_MISSING_MESSAGE = "nvml probe needs nvidia-ml-py (pip install nvidia-ml-py)"
NO_DRIVER_MESSAGE = "no NVIDIA driver found: the nvml probe needs a GPU; use probe: cpu"


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

    def anon_memory(self) -> None:
        return None  # device memory: no anonymous pages to count


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

    def anon_memory(self) -> None:
        return None  # device memory: no anonymous pages to count


# ------------------------------------------------------------------------------------ composite
