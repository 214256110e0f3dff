"""The `vllm` engine's requests and outputs: rlbench's sampling parameters in, a `Rollout` out.

- Requests: consecutive identical prompts (a GRPO group) become one request with `n` samples, as
  token ids (`{"prompt_token_ids": ids}`), with `logprobs=0`: vLLM then returns, for each sampled
  token, a dict holding that token's `Logprob`. Greedy is temperature 0; a seed per request makes
  its samples repeatable; EOS stops a completion (and is kept in it) unless `ignore_eos`.
- Outputs: laid out exactly as the `hf` engine lays them out (left-padded prompt, right-padded
  completion, EOS included in the mask, `truncated` where max_tokens cut it).
- Log-probs: the engine is built with `logprobs_mode="processed_logprobs"`, so a sampled token's
  log-prob is under logits / temperature, as the hf engine and the trainer compute it; with
  top_p < 1 vLLM renormalises over the nucleus (higher by minus the log of the nucleus' mass).
  Greedy requests report temperature-1 log-probs on both engines at the default temperature 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlbench.models.batching import left_pad
from rlbench.rollout import Rollout, SamplingParams


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
