"""Weights for the `vllm` engine: the policy's tensors under checkpoint names, and the paths that
carry them into vLLM after each update.

Names (`engine_weights`, rlbench.rollout.weight_names): the policy's weights as vLLM's `load_weights` expects them, under their
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

import os
import shutil
import tempfile
from typing import Any

import torch
from torch import nn

from rlbench.rollout.weight_names import PolicyWeights, engine_weights, unwrap

__all__ = ["LLMWeightSyncClient", "PolicyWeights", "WeightSync", "engine_weights", "unwrap", "weight_transfer_api"]


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
