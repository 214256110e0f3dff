"""Weights for the `vllm` engine: the policy's tensors under checkpoint names, and the paths that
carry them into vLLM after each update.

Names (`engine_weights`): the policy's weights as vLLM's `load_weights` expects them, under their
Hugging Face checkpoint names: peft's `base_model.model.` prefix and `.base_layer` dropped, LoRA
adapters merged in, `torch.compile`'s `_orig_mod.` dropped; a tied output embedding appears once.
vLLM maps them onto its fused layers (qkv_proj, gate_up_proj) itself.

Sync paths, one per device (`WeightSync.path` names the one that ran; the report carries it):

- `ipc` (GPU): vLLM's weight-transfer API (docs/training/weight_transfer in the vLLM repository).
  The LLM is built with `WeightTransferConfig(backend="ipc")`, and
  `WeightTransferTrainerFactory.trainer_init(IPCTrainerInitInfo(rank=0, packed=False), client=...,
  source=...)` returns a trainer engine whose `send_weights()` runs start_weight_update ->
  update_weights (CUDA IPC handles) -> finish_weight_update.
- `collective_rpc:file` (CPU, vLLM's engine core and worker in child processes): no CUDA IPC on a
  CPU, so the weights are written as one safetensors file in shared memory (/dev/shm where it
  exists) and `llm.collective_rpc("rlbench_load_weights", kwargs={"weights_path": dir})` has the
  worker reload them in place (rlbench.rollout.vllm_worker); the file is removed after the call.
  Only a path crosses the process boundary. Transient memory: one engine-dtype copy of the weights
  in shared memory while the call runs.
- `collective_rpc:inline` (engine in this process, `vllm_inline`): the same worker method gets the
  tensors themselves, by reference (no copy beyond the engine-dtype cast).

After each sync the engine bumps its weight version (`LLM.update_weight_version`, read back with
`get_weight_version`) and drops its prefix cache (prompt KV computed with the old weights).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def unwrap_policy(policy: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper and/or `torch.compile`."""
    model = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    return getattr(model, "_orig_mod", model)


def _is_lora_layer(module: nn.Module) -> bool:
    return hasattr(module, "base_layer") and hasattr(module, "get_delta_weight") and hasattr(module, "lora_A")


def _engine_parameters(policy: nn.Module) -> Iterator[tuple[str, nn.Parameter, nn.Module | None]]:
    """(checkpoint name, parameter, LoRA layer whose delta merges into it or None), in module order."""
    model = unwrap_policy(policy)
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


class LLMWeightSyncClient:
    """vLLM's `VLLMWeightSyncClient` protocol over an `LLM` object in this process.

    The trainer engine calls the protocol's four methods with bare `init_info`/`update_info`
    dicts; `LLM`'s own methods take them wrapped as `{"init_info": ...}`/`{"update_info": ...}`.
    """

    def __init__(self, llm: Any) -> None:
        self.llm = llm

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.llm.init_weight_transfer_engine({"init_info": init_info})

    def start_weight_update(self) -> None:
        self.llm.start_weight_update()

    def update_weights(self, update_info: Any) -> None:
        self.llm.update_weights({"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.llm.finish_weight_update(weight_version)


def weight_transfer_api() -> dict[str, Any] | None:
    """vLLM's weight-transfer classes, or None for a vLLM that predates them (or no vLLM)."""
    try:
        from vllm.config import WeightTransferConfig  # noqa: F401 - the LLM side of the same API
        from vllm.distributed.weight_transfer import ParamMeta, WeightSource, WeightTransferTrainerFactory
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo
    except (ImportError, AttributeError):
        return None
    return {"ParamMeta": ParamMeta, "WeightSource": WeightSource, "factory": WeightTransferTrainerFactory,
            "IPCTrainerInitInfo": IPCTrainerInitInfo}


def weight_source(api: dict[str, Any], policy: nn.Module, dtype: torch.dtype | None) -> PolicyWeights:
    """PolicyWeights that is also a vLLM `WeightSource` (its `metadata()` built from `specs()`)."""
    param_meta = api["ParamMeta"]

    class PolicyWeightSource(PolicyWeights, api["WeightSource"]):
        def metadata(self):
            return [param_meta(name, dtype, shape) for name, dtype, shape in self.specs()]

    return PolicyWeightSource(policy, dtype)


def shared_memory_dir() -> str | None:
    """/dev/shm when it is a writable directory (tmpfs: RAM, no disk write), else the system's temp dir."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class WeightSync:
    """Carries the policy's weights into a `vllm.LLM`: `send(policy)` runs the path picked at construction."""

    def __init__(self, llm: Any, policy: nn.Module, dtype: torch.dtype, *, api: dict[str, Any] | None,
                 inline: bool) -> None:
        """`api`: vLLM's weight-transfer classes (`weight_transfer_api()`) where the engine was built for
        CUDA IPC, else None (the worker reloads through collective_rpc)."""
        self.llm, self.dtype, self.inline = llm, dtype, inline
        self.trainer_engine = None
        if api is not None:
            self.path = "ipc"
            self.weights: PolicyWeights = weight_source(api, policy, dtype)
            self.trainer_engine = api["factory"].trainer_init(
                init_info=api["IPCTrainerInitInfo"](rank=0, packed=False), client=LLMWeightSyncClient(llm),
                source=self.weights)
        else:
            self.path = "collective_rpc:inline" if inline else "collective_rpc:file"
            self.weights = PolicyWeights(policy, dtype)

    def send(self, policy: nn.Module) -> None:
        self.weights.policy = policy
        if self.trainer_engine is not None:
            self.trainer_engine.send_weights()
        elif self.inline:
            self.llm.collective_rpc("rlbench_load_weights", kwargs={"weights": iter(self.weights)})
        else:
            self._send_file()

    def _send_file(self) -> None:
        from safetensors.torch import save_file

        folder = tempfile.mkdtemp(prefix="rlbench-vllm-weights-", dir=shared_memory_dir())
        try:
            save_file(dict(self.weights), os.path.join(folder, "model.safetensors"))
            self.llm.collective_rpc("rlbench_load_weights", kwargs={"weights_path": folder})
        finally:
            shutil.rmtree(folder, ignore_errors=True)
