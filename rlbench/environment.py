"""What a report records about where it ran: the numerical-environment fingerprint and the hardware class.

    env = environment(Path.cwd())     # the report's `environment` block
    env["hardware_class"]             # 'cpu-amd-epyc-avx2', 'cpu-intel-xeon-amx', 'gpu-h100-80gb-hbm3'
    stage_numerics()                  # what changes a cached stage's numbers, for cache keys

The same code and seed give different floats on different machines: MKL, oneDNN and ATen pick
their kernels by the CPU's instruction set (and by MKL_ENABLE_INSTRUCTIONS, ATEN_CPU_CAPABILITY,
ONEDNN_MAX_CPU_ISA), and a kernel with wider vectors or AMX tiles sums in another order. So a report
records, besides the package versions and the git state:

    cpu, cpu_vendor      model name and vendor (/proc/cpuinfo)
    cpu_features         of ISA_FEATURES, those this CPU has (the ones that change numerics or speed)
    cpu_capability       torch.backends.cpu.get_cpu_capability(): the ATen kernels in use
    math_libraries       MKL and oneDNN versions (torch.__config__.show()), BLAS
    numeric_env          NUMERIC_ENV_VARS as set (null: not set): thread counts and ISA limits
    torch_threads        intra-op threads (what the runs use unless the suite sets `threads`)
    ram_bytes            total RAM
    gpu                  name, count, driver, CUDA, compute capability, memory (null: no GPU)
    hardware_class       one short id derived from the above (`hardware_class`, rule below)

The hardware class: what decides the numbers and the speed of the same code, nothing else.
- On a GPU: `gpu-<name>` from the device name ("NVIDIA H100 80GB HBM3" -> gpu-h100-80gb-hbm3); the
  name fixes the chip, its memory and its peak. The host CPU, driver and CUDA versions are not in it
  (software, listed as differences; the CPU does little of a GPU run's work).
- On a CPU: `cpu-<model>-<isa>`: the model name without vendor marks, frequency and core counts
  ("AMD EPYC 7B13" -> amd-epyc-7b13; a VM that hides the model, "AMD EPYC", gives amd-epyc), then the
  widest instruction set the kernels may use: amx (AMX bf16 tiles), avx512-bf16, avx512, avx2 or
  default, from torch's CPU capability lowered by any MKL_ENABLE_INSTRUCTIONS or ONEDNN_MAX_CPU_ISA
  limit (forcing the AVX2 kernels on an AMX machine makes an avx2 class: other kernels, other floats).
- Not in it: the host name and anything else that names one machine rather than a kind; RAM (it
  decides what fits, not a figure any run measures); the core count and the thread count (a VM
  size, not a kind of machine: `rlbench check` compares torch threads beside the class, so a
  16-thread run is never gated against a 2-thread baseline); library versions (listed as environment
  differences; a baseline is regenerated when they change).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = ("rlbench", "torch", "transformers", "datasets", "vllm", "peft", "nvidia-ml-py")
ISA_FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16",
                "asimd", "sve", "sve2", "bf16")
"""CPU flags recorded when present: x86 vector widths and FMA (fused rounding), bf16/fp16 arithmetic
(AVX512-BF16, AVX512-FP16, AMX tiles); on Arm, NEON (asimd), SVE and bf16."""
NUMERIC_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_ENABLE_INSTRUCTIONS",
                    "MKL_CBWR", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
"""Environment variables that change thread counts or which kernels run."""
ISA_TIERS = ("default", "avx2", "avx512", "avx512-bf16", "amx")
_LIMIT_TIER = {  # MKL_ENABLE_INSTRUCTIONS and ONEDNN_MAX_CPU_ISA values, lower-cased -> the tier they allow
    "default": "default", "sse41": "default", "sse4_2": "default", "avx": "default",
    "avx2": "avx2", "avx2_vnni": "avx2", "avx2_vnni_2": "avx2",
    "avx512": "avx512", "avx512_core": "avx512", "avx512_core_vnni": "avx512", "avx512_e1": "avx512",
    "avx512_e2": "avx512", "avx512_core_bf16": "avx512-bf16", "avx512_core_fp16": "avx512-bf16",
    "avx512_e3": "avx512-bf16", "avx10_1_512": "avx512-bf16", "avx512_core_amx": "amx", "avx512_core_amx_fp16": "amx",
    "avx512_e4": "amx", "avx10_1_512_amx": "amx", "avx10_1_512_amx_fp16": "amx"}
_MODEL_NOISE = re.compile(r"\((r|tm)\)|\b(processor|cpu|with radeon graphics|\d+-core|\d+ cores?)\b|@.*$", re.I)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(path: Path) -> dict[str, Any]:
    """Commit and dirty flag of the git work tree at `path` (None where it is not one)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


# ----------------------------------------------------------------------------------------- CPU


def _cpuinfo(path: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open(path, errors="replace") as cpuinfo:
            for line in cpuinfo:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model_name() -> str:
    """The CPU's model name ("model name" in /proc/cpuinfo where there is one)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_vendor() -> str | None:
    """vendor_id (GenuineIntel, AuthenticAMD) or, on Arm, the implementer code; None if unknown."""
    info = _cpuinfo()
    return info.get("vendor_id") or (f"arm-implementer-{info['CPU implementer']}" if "CPU implementer" in info
                                     else None)


def cpu_features() -> list[str]:
    """The ISA_FEATURES this CPU has (flags on x86, Features on Arm), in ISA_FEATURES order."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return [f for f in ISA_FEATURES if f in flags]


def math_libraries() -> dict[str, str | None]:
    """MKL and oneDNN versions and the BLAS torch was built with (torch.__config__.show())."""
    import torch

    shown = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version ([\w.]+)", shown)
    onednn = re.search(r"(?:MKL-DNN|oneDNN) v([\w.]+)", shown)
    blas = re.search(r"BLAS_INFO=(\w+)", shown)
    return {"mkl": mkl.group(1) if mkl else None, "onednn": onednn.group(1) if onednn else None,
            "blas": blas.group(1) if blas else None}


def numeric_env() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in NUMERIC_ENV_VARS}


def ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def cpu_capability() -> str:
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


# ----------------------------------------------------------------------------------------- GPU


def gpu_info() -> dict[str, Any] | None:
    """The first CUDA device: name, count, CUDA version torch was built with, driver (NVML),
    compute capability and memory; None without one."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    info: dict[str, Any] = {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
                            "cuda": torch.version.cuda, "driver": None, "compute_capability": f"{major}.{minor}",
                            "total_bytes": torch.cuda.get_device_properties(0).total_memory}
    try:
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        info["driver"] = driver.decode() if isinstance(driver, bytes) else str(driver)
        pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - NVML is optional here: the driver stays unknown
        pass
    return info


# ------------------------------------------------------------------------------ the fingerprint


def environment(work_tree: Path | None = None) -> dict[str, Any]:
    """The report's `environment` block (see the module docstring)."""
    import torch

    env: dict[str, Any] = {
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "os": f"{platform.system()} {platform.release()}",
        "cpu": cpu_model_name(),
        "cpu_vendor": cpu_vendor(),
        "cpu_features": cpu_features(),
        "cpu_capability": cpu_capability(),
        "math_libraries": math_libraries(),
        "numeric_env": numeric_env(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_bytes": ram_bytes(),
        "gpu": gpu_info(),
        "git": git_state(work_tree or Path.cwd()),
        "hostname": platform.node(),
    }
    env["hardware_class"] = hardware_class(env)
    return env


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def isa_tier(env: dict[str, Any]) -> str:
    """The widest instruction set the kernels may use (ISA_TIERS): torch's CPU capability, AMX or
    AVX512-BF16 where the CPU has them, lowered by an MKL_ENABLE_INSTRUCTIONS or ONEDNN_MAX_CPU_ISA limit."""
    capability = str(env.get("cpu_capability") or "default").lower()
    features = set(env.get("cpu_features") or ())
    tier = {"avx2": "avx2", "avx512": "avx512"}.get(capability, "default")
    if tier == "avx512" and "avx512_bf16" in features:
        tier = "avx512-bf16"
    if tier.startswith("avx512") and {"amx_tile", "amx_bf16"} <= features:
        tier = "amx"
    limits = env.get("numeric_env") or {}
    for var in ("MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        limit = _LIMIT_TIER.get(str(limits.get(var) or "").lower())
        if limit is not None and ISA_TIERS.index(limit) < ISA_TIERS.index(tier):
            tier = limit
    return tier


def hardware_class(env: dict[str, Any]) -> str:
    """The short id of the kind of machine an environment block describes (the rule is in the module
    docstring): 'gpu-h100-80gb-hbm3', 'cpu-amd-epyc-avx2', 'cpu-intel-xeon-amx'. Pure: a dict in."""
    gpu = env.get("gpu")
    if gpu and gpu.get("name"):
        name = re.sub(r"\b(nvidia|tesla|geforce|quadro)\b", " ", str(gpu["name"]), flags=re.I)
        return "gpu-" + (_slug(name) or "unknown")[:40]
    model = _slug(_MODEL_NOISE.sub(" ", str(env.get("cpu") or "")))
    vendor = {"genuineintel": "intel", "authenticamd": "amd"}.get(str(env.get("cpu_vendor") or "").lower())
    if vendor and not model.startswith(vendor):
        model = f"{vendor}-{model}" if model else vendor
    return f"cpu-{(model or 'unknown')[:40].strip('-')}-{isa_tier(env)}"


def stage_numerics(device: str | None = None) -> dict[str, Any]:
    """What changes a cached stage's numbers (SFT, the reward model, the starting evaluation) for its
    cache key: the torch and transformers versions and the device's kernels: a GPU's name, or the
    CPU vendor and ISA tier (the AVX2 and the AMX kernels of one torch give different floats; two
    AVX2 AMD EPYC models give the same). `device`: 'cuda' or 'cpu' (default: cuda if available)."""
    import torch

    cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if cuda:
        kernels = f"gpu {torch.cuda.get_device_name(0)}"
    else:
        env = {"cpu_capability": cpu_capability(), "cpu_features": cpu_features(), "numeric_env": numeric_env()}
        kernels = f"cpu {cpu_vendor() or platform.machine()} {isa_tier(env)}"
    versions = package_versions()
    return {"torch": versions["torch"], "transformers": versions["transformers"], "kernels": kernels}
