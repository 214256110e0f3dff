"""Memory probes: how much memory each phase of a run (generate, score, update, ...) peaked at.

Usage (the runner's view):

    probe = catalog.resolve_probe("auto", period_ms=5, heap="fast")   # always a CompositeProbe
    with probe.phase("update") as by_probe:         # {probe name: PhaseMemory}
        train_step()
    by_probe["cpu"].peak_bytes, by_probe["cpu"].method

Every PhaseMemory is filled in a `finally` when its phase exits, so a phase that raises (an
out-of-memory error included) still reports what it reached. Bytes are absolute figures for the
process or device, not relative to the phase start (`peak_rise_bytes` gives the rise).

Probes (listed in rlbench/catalog.py; each entry is a factory `(period_ms, heap) -> probe`, `heap`
being the suite's `probe_heap`, which only the cpu probe reads):

- `cpu`: resident memory (RSS) of this process. At phase start it writes "5" to
  /proc/self/clear_refs, which resets the kernel's peak-RSS counter VmHWM to the current RSS; at
  phase end it reads VmHWM from /proc/self/status: an exact peak with no sampling. VmHWM counts every
  resident page: anonymous memory, file-backed pages (memory-mapped safetensors weights, shared
  library code as it is paged in) and shared memory; the end-of-phase split is in `extra`.
  The anonymous part alone (RssAnon) has no kernel peak, so a thread samples it every period_ms:
  `extra["rss_anon_peak_bytes"]` per phase, `anon_memory()` for the run (see cpu_probe.py).
  glibc keeps freed heap memory resident, and its mmap threshold grows with use (up to 32 MiB), so
  freed tensors would stay counted. Two things make the figures the memory that is alive: worker
  processes start with a fixed mmap threshold (`cpu_worker_env(suite.probe_heap)`, set by the runner
  because glibc reads it at start-up; the probe is given the suite's `probe_heap` and its method says
  whether the process has it): every allocation at or above it is its own mmap and goes back to
  the kernel when freed; and before each reset (and
  each snapshot) the probe calls glibc's `malloc_trim(0)`, which hands the free pages of smaller
  allocations back too. `probe_heap: fast` (the default) sets 1 MiB: a Llama train step's rise reads
  84.2 MB against 82.4 MB of tensors in PyTorch's profiler (110 MB with glibc's defaults, 102 MB with
  a 4 MiB threshold), but within a phase glibc keeps a freed block under 1 MiB resident for reuse,
  and where activations are such blocks (the embedded model's) a phase reads 21 to 39 MiB above
  about 110 MiB of live tensors (benchmarks/tensors_vs_rss.py). `probe_heap: exact` sets 64 KiB:
  the rise follows the live tensors to within 1% there, but every medium tensor is a fresh mmap,
  and a quickstart RL step took 1.57 and 1.59 s against 0.98 and 1.04 s with 1 MiB (README,
  "Reading the memory table"), so throughput suites keep `fast`.
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

from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import Any

from rlbench.errors import UserError
from rlbench.measure.cpu_probe import CPU_WORKER_ENV, CpuProbe, cpu_worker_env, reset_peak_rss
from rlbench.measure.gpu_probes import NO_DRIVER_MESSAGE, NVML_MISSING_MESSAGE, NvmlProbe, TorchCudaProbe
from rlbench.measure.probing import MemoryProbe, PhaseMemory, RunProbe

__all__ = ["CPU_WORKER_ENV", "NO_DRIVER_MESSAGE", "NVML_MISSING_MESSAGE", "CompositeProbe", "CpuProbe",
           "MemoryProbe", "NvmlProbe", "PhaseMemory", "RunProbe", "TorchCudaProbe", "auto_probe", "available_probe_names",
           "cpu_probe", "cpu_worker_env", "nvml_probe", "reset_peak_rss", "torch_cuda_probe"]


class CompositeProbe:
    """Several probes measuring the same phases. `phase` yields {probe name: PhaseMemory}.

    The first probe is the primary one: the report shows its figures first (nvml on a GPU, since
    it sees all of the process's GPU memory; cpu otherwise). A single probe is wrapped too, so the
    runner has one API whatever the suite chose (`probing.RunProbe`).
    """

    measures_advantages = False  # a phase costs each probe a reset and a sampler per step; advantages hold little

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

    def loading(self, role: str) -> AbstractContextManager[None]:
        return nullcontext()  # loads are measured by snapshots before and after

    def snapshot(self) -> dict[str, int]:
        return {p.name: p.snapshot() for p in self.probes}

    def process_peak_bytes(self) -> dict[str, int]:
        return {p.name: p.process_peak_bytes() for p in self.probes}

    def anon_memory(self) -> dict[str, dict[str, Any]]:
        """{probe name: anonymous-memory figures} for the probes that measure them (cpu)."""
        return {p.name: figures for p in self.probes if (figures := p.anon_memory()) is not None}

    def describe(self) -> dict[str, Any]:
        return {"probe": self.name, "primary": self.primary, "probes": [p.describe() for p in self.probes]}


# ------------------------------------------------------------------------- factories (see the catalog)


# Every factory returns a CompositeProbe (one probe or several behind one interface).


def cpu_probe(period_ms: float, heap: str) -> CompositeProbe:
    return CompositeProbe("cpu", [CpuProbe(period_ms, heap=heap)])


def torch_cuda_probe(period_ms: float, heap: str) -> CompositeProbe:
    return CompositeProbe("torch_cuda", [TorchCudaProbe(period_ms)])


def nvml_probe(period_ms: float, heap: str) -> CompositeProbe:
    return CompositeProbe("nvml", [NvmlProbe(period_ms)])


def auto_probe(period_ms: float, heap: str) -> CompositeProbe:
    import torch

    if not torch.cuda.is_available():
        return CompositeProbe("auto", [CpuProbe(period_ms, heap=heap)])
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
