"""The policy's weights as an inference engine loads them: Hugging Face checkpoint names, LoRA merged.

A policy module may be wrapped by peft (`base_model.model.` prefixes, `.base_layer` weights and
`lora_A`/`lora_B` adapters) and by `torch.compile` (`_orig_mod.`); an engine such as vLLM loads the
plain checkpoint names and maps them onto its fused layers itself. `engine_weights(policy)` gives
(checkpoint name, tensor) with each LoRA delta merged into its base weight; `PolicyWeights` is the
same stream as a re-iterable source with `specs()` (name, dtype, shape) that materialises nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn


def unwrap(policy: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper and/or `torch.compile`."""
    model = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    return getattr(model, "_orig_mod", model)


def _is_lora_layer(module: nn.Module) -> bool:
    return hasattr(module, "base_layer") and hasattr(module, "get_delta_weight") and hasattr(module, "lora_A")


def _engine_parameters(policy: nn.Module) -> Iterator[tuple[str, nn.Parameter, nn.Module | None]]:
    """(checkpoint name, parameter, LoRA layer whose delta merges into it or None), in module order."""
    model = unwrap(policy)
    lora_layers = {name: module for name, module in model.named_modules() if _is_lora_layer(module)}
    for name, param in model.named_parameters():
        name = name.replace("_orig_mod.", "")
        if ".lora_" in name:  # adapter matrices: merged into their base weight below
            continue
        owner, _, leaf = name.rpartition(".")
        if owner.endswith(".base_layer"):
            layer = owner[: -len(".base_layer")]
            yield f"{layer}.{leaf}", param, lora_layers.get(layer) if leaf == "weight" else None
        else:
            yield name, param, None


def _merged(param: torch.Tensor, lora_layer: nn.Module | None) -> torch.Tensor:
    """The weight the policy computes with: base weight plus the active adapters' scaled B @ A."""
    weight = param.detach()
    if lora_layer is None or lora_layer.merged or lora_layer.disable_adapters:
        return weight
    for adapter in lora_layer.active_adapters:
        if adapter in lora_layer.lora_A:
            weight = weight + lora_layer.get_delta_weight(adapter).to(weight.dtype)
    return weight


def engine_weights(policy: nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights as an inference engine loads them: (checkpoint name, tensor), LoRA merged.

    A tied output embedding appears once (as `model.embed_tokens.weight`), as in
    `named_parameters`; engines tie it themselves. Tensors are cast to `dtype` when given.
    """
    for name, param, lora_layer in _engine_parameters(policy):
        tensor = _merged(param, lora_layer)
        yield name, (tensor if dtype is None else tensor.to(dtype)).contiguous()


class PolicyWeights:
    """The two channels of a vLLM `WeightSource` over the policy: `specs()` (what will be sent:
    name, dtype, shape, without materialising anything) and iteration (the tensors). Re-iterable."""

    def __init__(self, policy: nn.Module, dtype: torch.dtype | None = None) -> None:
        self.policy, self.dtype = policy, dtype

    def specs(self) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        return [(name, self.dtype or param.dtype, tuple(param.shape))
                for name, param, _ in _engine_parameters(self.policy)]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return engine_weights(self.policy, self.dtype)

    def total_bytes(self) -> int:
        return sum(math.prod(shape) * dtype.itemsize for _, dtype, shape in self.specs())
