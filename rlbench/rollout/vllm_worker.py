"""Code that runs inside vLLM's worker: rlbench's `worker_extension_cls` for the `vllm` engine.

vLLM mixes this class into its worker class (the engine is built with
`worker_extension_cls="rlbench.rollout.vllm_worker.PolicyWeightLoader"`), so its methods are
reached from the trainer by name, `llm.collective_rpc("rlbench_load_weights", kwargs=...)`, in
the worker's own process (a child of the engine core, itself a child of the trainer) or in the
trainer's process when the engine runs inline. Nothing but names and paths crosses the process
boundary: no pickled code, so vLLM's insecure serialization stays off.

Why not `model.load_weights` alone: vLLM's CPU worker repacks each linear layer's weight for its
GEMM kernels after loading (oneDNN or sgl-kernel packed copies; the `weight` parameter is left
empty), so new weights must go through vLLM's in-place reload (`Worker.reload_weights`, which
re-runs that processing layer by layer). That reload skips a tied output layer (`lm_head` shares
the embedding's storage and is never in the checkpoint): its storage gets the new values through
the embedding, but on a CPU its packed copy would still hold the old ones, so it is packed again
here (on a GPU the same call does nothing).

Imports nothing from vLLM at module level: importing rlbench never needs vLLM.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

WORKER_EXTENSION = "rlbench.rollout.vllm_worker.PolicyWeightLoader"


def _tied_output_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Layers with a `quant_method` whose weight shares its storage with another layer's (a tied LM head)."""
    owners: dict[int, torch.nn.Module] = {}
    tied = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.numel() == 0 or weight.is_meta:
            continue
        key = weight.untyped_storage().data_ptr()
        if key in owners and owners[key] is not module and getattr(module, "quant_method", None) is not None:
            tied.append(module)
        owners.setdefault(key, module)
    return tied


def safetensors_weights(folder: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) from every .safetensors file in `folder`, one tensor at a time."""
    from safetensors import safe_open

    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as file:
            for name in file.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield name, file.get_tensor(name)


class PolicyWeightLoader:
    """Methods vLLM adds to its worker (`self` is the worker: `self.model_runner`, `self.reload_weights`)."""

    def rlbench_load_weights(self, weights_path: str | None = None,
                             weights: Iterable[tuple[str, torch.Tensor]] | None = None) -> int:
        """Load checkpoint-format weights in place, from a directory of safetensors files or (inline
        engine) an iterator of (name, tensor); re-pack tied output layers. Returns how many tied layers
        were re-packed."""
        assert (weights_path is None) != (weights is None), "give weights_path or weights, not both"
        if weights is None:
            weights = safetensors_weights(weights_path)
        runner = self.model_runner
        model = runner.get_model() if hasattr(runner, "get_model") else runner.model
        if hasattr(self, "reload_weights"):  # re-runs each layer's post-load processing (CPU repacking)
            self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        else:  # a vLLM before in-place reloading: nothing is repacked, the model loads directly
            model.load_weights(weights)
        tied = _tied_output_layers(model)
        for layer in tied:
            layer.quant_method.process_weights_after_loading(layer)
        return len(tied)

    def rlbench_kv_cache_bytes(self) -> int:
        """Bytes of the KV cache tensors this worker allocated."""
        caches: Any = getattr(self.model_runner, "kv_caches", None) or []
        seen, total = set(), 0
        for cache in caches:
            for tensor in cache if isinstance(cache, (list, tuple)) else [cache]:
                key = tensor.untyped_storage().data_ptr()
                if key not in seen:
                    seen.add(key)
                    total += tensor.untyped_storage().nbytes()
        return total
