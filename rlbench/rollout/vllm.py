"""The `vllm` engine: rollouts from a colocated `vllm.LLM`, the policy's weights loaded in after each update.

    engine = VLLMEngine(policy, tokenizer, model_path=policy_dir, dtype="bfloat16", gpu_memory_utilization=0.3)
    rollout = engine.generate(prompt_ids, 4, SamplingParams(max_new_tokens=256), seed=0)  # 4 per prompt
    engine.sync_weights(policy)          # after every optimizer step

What it does with vLLM (imported lazily: `import rlbench` works without it):

- Requests: consecutive identical prompts (a GRPO group) become one request with `n` samples, as
  token ids (`{"prompt_token_ids": ids}`), with `logprobs=0`: vLLM then returns, for each sampled
  token, a dict holding that token's `Logprob`. The completions are laid out exactly as the `hf`
  engine lays them out (left-padded prompt, right-padded completion, EOS included in the mask).
- Log-probs: vLLM reports the raw model log-probs (before temperature and top-p); they equal the
  trainer's at temperature 1. The loop recomputes the old log-probs with the policy anyway
  (`has_own_weights`), so these are only a cross-check.
- Weight sync, vLLM's weight-transfer API (docs/training/weight_transfer in the vLLM repository):
  the LLM is built with `WeightTransferConfig(backend="ipc")` (training and inference on the same
  GPU), and `WeightTransferTrainerFactory.trainer_init(IPCTrainerInitInfo(rank=0, packed=False),
  client=..., source=...)` returns a trainer engine whose `send_weights()` runs
  start_weight_update -> update_weights (CUDA IPC handles) -> finish_weight_update. The client
  forwards those calls to the `LLM` object; the source yields the policy's weights under their
  Hugging Face checkpoint names (`rlbench.rollout.weight_names`: peft's `base_model.model.` prefix and
  `.base_layer` dropped, LoRA adapters merged in, `torch.compile`'s `_orig_mod.` dropped), which
  vLLM's `load_weights` maps onto its fused layers itself. A vLLM without that API (before the
  weight-transfer system) gets its engine core in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`)
  and the weights through the driver worker's `model.load_weights(...)`.
  After each sync the prefix cache is reset (cached prompt KV came from the old weights).
  With the weight-transfer API vLLM's engine core runs in a child process (CUDA IPC cannot open a
  handle in the process that made it), so per-process GPU figures of this process leave vLLM out;
  `memory_bytes()` reports its share.
- Sleep (`rollout.sleep_between_phases`): after generating, `llm.sleep(level=1)` frees the KV
  cache and moves the weights to CPU memory while the policy updates; `wake_up(tags=["weights"])`
  before the weights are loaded, and the KV cache wakes before the next generation.
- Memory: `memory_bytes()` gives the engine's own weights (from the parameter shapes and the
  engine dtype) and KV cache (vLLM's `num_gpu_blocks` x `block_size` x bytes per token), the
  `rollout` role in the report.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlbench.device import module_device
from rlbench.errors import UserError
from rlbench.models.batching import left_pad
from rlbench.models.loading import torch_dtype
from rlbench.rollout import EngineOptions, Rollout, SamplingParams
from rlbench.rollout.weight_names import PolicyWeights, unwrap

VLLM_MISSING = ("rollout.engine: vllm is not installed; install rlbench's extra 'vllm' (pip install vllm) "
                "on a machine with an NVIDIA GPU, or use engine: hf")


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


def driver_model(llm: Any) -> nn.Module:
    """The model module inside an `LLM` whose engine runs in this process (the driver worker's)."""
    worker = llm.llm_engine.model_executor.driver_worker
    worker = getattr(worker, "worker", worker)  # V1 wraps the GPU worker in a WorkerWrapperBase
    return worker.model_runner.model


# ---- requests and outputs ---------------------------------------------------------------------


@dataclass(frozen=True)
class Completion:
    token_ids: list[int]
    logprobs: list[float]
    truncated: bool  # stopped by max_tokens, not by EOS


def sampling_kwargs(params: SamplingParams, n: int, seed: int | None, eos_id: int) -> dict[str, Any]:
    """Keyword arguments of `vllm.SamplingParams` for one request of `n` samples."""
    return {
        "n": n,
        "temperature": 0.0 if params.greedy else params.temperature,
        "top_p": 1.0 if params.greedy else params.top_p,
        "max_tokens": params.max_new_tokens,
        "logprobs": 0,  # the sampled token's log-prob only
        "seed": seed,
        "stop_token_ids": [] if params.ignore_eos else [eos_id],
        "ignore_eos": params.ignore_eos,
        "detokenize": False,  # texts are decoded from the ids, exactly as the hf engine does
    }


def unpack_completions(outputs: Sequence[Any], counts: Sequence[int]) -> list[Completion]:
    """`RequestOutput`s (one per request, in request order) -> one Completion per sample, in order.

    Each output's `.outputs` holds `n` `CompletionOutput`s with `.index`, `.token_ids`,
    `.finish_reason` and `.logprobs`: per generated token a mapping token id -> `Logprob`.
    """
    assert len(outputs) == len(counts), f"{len(outputs)} outputs for {len(counts)} requests"
    completions = []
    for output, n in zip(outputs, counts):
        samples = sorted(output.outputs, key=lambda c: c.index)
        assert len(samples) == n, f"request asked for {n} samples, got {len(samples)}"
        for sample in samples:
            token_ids = list(sample.token_ids)
            if sample.logprobs is None:
                logprobs = [0.0] * len(token_ids)
            else:
                logprobs = [float(sample.logprobs[t][token].logprob) for t, token in enumerate(token_ids)]
            completions.append(Completion(token_ids, logprobs, sample.finish_reason == "length"))
    return completions


def completion_prompt_logprobs(prompt_logprobs: Sequence[Any], sequence: Sequence[int], start: int) -> list[float]:
    """Log-probs of sequence[start:] read from a request's `prompt_logprobs` (position t holds a
    mapping token id -> Logprob for token t given tokens < t; position 0 is None)."""
    return [float(prompt_logprobs[t][sequence[t]].logprob) for t in range(start, len(sequence))]


def build_rollout(prompt_ids: Sequence[Sequence[int]], completions: Sequence[Completion], pad_id: int,
                  tokenizer: Any, device: torch.device | str = "cpu") -> Rollout:
    """A Rollout laid out like the hf engine's: left-padded prompts [N, P], then completions [N, T]
    right-padded with pad_id; the mask covers every generated token (EOS included)."""
    assert len(prompt_ids) == len(completions), f"{len(prompt_ids)} prompts, {len(completions)} completions"
    ids, mask = left_pad([list(p) for p in prompt_ids], pad_id)
    width = max(1, max(len(c.token_ids) for c in completions))
    tokens = torch.full((len(completions), width), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((len(completions), width))
    logprobs = torch.zeros((len(completions), width))
    for row, completion in enumerate(completions):
        length = len(completion.token_ids)
        tokens[row, :length] = torch.tensor(completion.token_ids, dtype=torch.long)
        completion_mask[row, :length] = 1.0
        logprobs[row, :length] = torch.tensor(completion.logprobs)
    return Rollout(
        input_ids=torch.cat([ids, tokens], dim=1).to(device),
        attention_mask=torch.cat([mask, completion_mask.long()], dim=1).to(device),
        prompt_width=ids.shape[1],
        completion_ids=tokens.to(device),
        completion_mask=completion_mask.to(device),
        logprobs=logprobs.to(device),
        texts=tokenizer.batch_decode(tokens, skip_special_tokens=True),
        truncated=torch.tensor([c.truncated for c in completions], dtype=torch.bool, device=device),
    )


def kv_bytes_per_token(config: Any, itemsize: int) -> int:
    """Key and value bytes one token takes in the KV cache: 2 x layers x KV heads x head dim x itemsize."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * itemsize


def kv_cache_bytes(llm: Any, config: Any, itemsize: int) -> int | None:
    """Bytes of the KV cache vLLM allocated (None when this vLLM does not expose its block count)."""
    cache = getattr(getattr(getattr(llm, "llm_engine", None), "vllm_config", None), "cache_config", None)
    blocks, block_size = getattr(cache, "num_gpu_blocks", None), getattr(cache, "block_size", None)
    if not blocks or not block_size:
        return None
    if str(getattr(cache, "cache_dtype", "auto")).startswith("fp8"):
        itemsize = 1
    return int(blocks) * int(block_size) * kv_bytes_per_token(config, itemsize)


# ---- the engine -------------------------------------------------------------------------------


def create_llm(model_path: str | Path, *, dtype: str, gpu_memory_utilization: float, enable_sleep_mode: bool,
               max_model_len: int | None, seed: int, trust_remote_code: bool, weight_transfer: bool) -> Any:
    """A `vllm.LLM` on this machine's GPU, sharing it with the trainer."""
    try:
        import vllm
    except ImportError:
        raise UserError(VLLM_MISSING) from None
    kwargs: dict[str, Any] = {
        "model": str(model_path), "tokenizer": str(model_path), "dtype": dtype, "seed": seed,
        "gpu_memory_utilization": gpu_memory_utilization, "enable_sleep_mode": enable_sleep_mode,
        "trust_remote_code": trust_remote_code,
    }
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    if weight_transfer:
        from vllm.config import WeightTransferConfig

        kwargs["weight_transfer_config"] = WeightTransferConfig(backend="ipc")
        # CUDA IPC handles hold a rebuild function: they reach vLLM's engine process (a child of this
        # one) only through its pickle fallback.
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    else:  # no weight-transfer API: keep the engine in this process and load weights into its model
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return vllm.LLM(**kwargs)


class VLLMEngine:
    """A colocated vLLM engine with its own copy of the policy's weights (and its own KV cache)."""

    name = "vllm"
    has_own_weights = True

    def __init__(self, policy: nn.Module, tokenizer: Any, *, model_path: str | Path | None = None,
                 dtype: str = "bfloat16", gpu_memory_utilization: float = 0.3, sleep_between_phases: bool = False,
                 max_model_len: int | None = None, seed: int = 0, trust_remote_code: bool = False,
                 llm: Any = None, sampling_params: Any = None) -> None:
        """`llm` and `sampling_params` (the `vllm.SamplingParams` class) are built from vllm when not given."""
        self.tokenizer = tokenizer
        self.device = module_device(policy)
        self.config = policy.config
        self.sleep_between_phases = sleep_between_phases
        self.asleep: set[str] = set()
        self.prefix_cache_stale = False
        self.syncs = 0
        api = weight_transfer_api() if llm is None else None
        if llm is None:
            path = model_path or getattr(unwrap(policy), "name_or_path", None)
            assert path, "the vllm engine needs the policy's directory (model_path)"
            llm = create_llm(path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                             enable_sleep_mode=sleep_between_phases, max_model_len=max_model_len, seed=seed,
                             trust_remote_code=trust_remote_code, weight_transfer=api is not None)
        if sampling_params is None:
            from vllm import SamplingParams as sampling_params
        self.llm, self.sampling_params = llm, sampling_params
        self.trainer_engine = None  # vLLM's IPC sender, or None: load into the in-process model
        if api is None:
            self.weights = PolicyWeights(policy, torch_dtype(dtype))
        else:
            self.weights = weight_source(api, policy, torch_dtype(dtype))
            self.trainer_engine = api["factory"].trainer_init(
                init_info=api["IPCTrainerInitInfo"](rank=0, packed=False), client=LLMWeightSyncClient(llm),
                source=self.weights)

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
        self.weights.policy = policy
        if "weights" in self.asleep:
            self.llm.wake_up(tags=["weights"])
            self.asleep.discard("weights")
        if self.trainer_engine is not None:
            self.trainer_engine.send_weights()
        else:
            driver_model(self.llm).load_weights(iter(self.weights))
        self.prefix_cache_stale = True  # cached prompt KV was computed with the old weights
        self.syncs += 1

    def memory_bytes(self) -> dict[str, int]:
        figures = {"weights": self.weights.total_bytes()}
        kv = kv_cache_bytes(self.llm, self.config, self.weights.dtype.itemsize)
        if kv is not None:
            figures["kv_cache"] = kv
        return figures

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
                      seed=options.seed, trust_remote_code=options.trust_remote_code)
