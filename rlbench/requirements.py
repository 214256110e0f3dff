"""What a suite needs from this machine: a GPU, vllm, network access to the hub.

`check_requirements(suite)` raises one UserError listing everything missing, before any work
starts; `missing_requirements(suite)` returns the same lines for `rlbench validate` to warn with.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rlbench.config import Suite
from rlbench.errors import UserError


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def missing_requirements(suite: Suite) -> list[str]:
    missing = []
    gpu = _has_cuda()
    if suite.rollout.engine == "vllm":
        if importlib.util.find_spec("vllm") is None:
            missing.append("rollout.engine: vllm is not installed (pip install 'rlbench[vllm]')")
        if not gpu:
            missing.append("rollout.engine: vllm needs an NVIDIA GPU, and this machine has none (use engine: hf)")
    if suite.probe in ("torch_cuda", "nvml") and not gpu:
        missing.append(f"probe: {suite.probe} needs an NVIDIA GPU, and this machine has none (use probe: cpu or auto)")
    if suite.model.dtype in ("bfloat16", "float16") and not gpu:
        missing.append(f"model.dtype: {suite.model.dtype} is meant for a GPU; on this CPU use float32")
    if suite.model.lora is not None and importlib.util.find_spec("peft") is None:
        missing.append("model.lora: peft is not installed (pip install 'rlbench[peft]')")
    name = suite.model.name
    hub_needed = []
    if name != "embedded" and not Path(name).expanduser().is_dir() and not _in_hub_cache(name):
        hub_needed.append(f"model.name: '{name}' is not a local directory or in the Hugging Face cache, and the "
                          "hub cannot be reached; download it where there is network or point model.name at a directory")
    if suite.task.name == "gsm8k" and suite.task.path is None and not _dataset_cached("openai/gsm8k"):
        hub_needed.append("task.path: GSM8K is not in the datasets cache and the hub cannot be reached; set task.path "
                          "to a local copy (a directory with train/test .jsonl or .parquet files)")
    if hub_needed and not _hub_reachable():
        missing.extend(hub_needed)
    return missing


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
    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def _dataset_cached(name: str) -> bool:
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    hub = Path(constants.HF_HUB_CACHE)
    return (hub / f"datasets--{name.replace('/', '--')}").is_dir()


def check_requirements(suite: Suite) -> None:
    missing = missing_requirements(suite)
    if missing:
        raise UserError(*[f"cannot run suite '{suite.name}' on this machine: {m}" for m in missing])
