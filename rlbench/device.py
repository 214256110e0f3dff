"""Where models run: the first CUDA device when there is one, else the CPU."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device
