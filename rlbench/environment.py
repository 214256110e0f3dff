"""What a report records about where it ran: versions, machine, device, git state."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = ("rlbench", "torch", "transformers", "datasets", "vllm", "peft", "nvidia-ml-py")


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


def gpu_info() -> dict[str, Any] | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    info: dict[str, Any] = {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
                            "cuda": torch.version.cuda, "driver": None,
                            "total_bytes": torch.cuda.get_device_properties(0).total_memory}
    try:
        import pynvml

        pynvml.nvmlInit()
        info["driver"] = pynvml.nvmlSystemGetDriverVersion()
        pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - NVML is optional here: the driver stays unknown
        pass
    return info


def environment(work_tree: Path | None = None) -> dict[str, Any]:
    import torch

    from rlbench.measure.flops import cpu_model_name

    return {
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "os": f"{platform.system()} {platform.release()}",
        "cpu": cpu_model_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu_info(),
        "git": git_state(work_tree or Path.cwd()),
        "hostname": platform.node(),
    }
