"""Rollout engines: how completions are sampled. Algorithms only ever see `RolloutEngine`.

An engine takes prompts (token ids) and returns a `Rollout`: prompt and completion ids in one
left-padded/right-padded batch, the per-token log-probabilities of the sampled tokens under the
sampling distribution (logits / temperature, before top-p filtering, as the trainer computes
them), completion lengths and truncation flags. `sync_weights(policy)` is called after every
update; the `hf` engine samples from the policy module itself, so it has nothing to copy.

Engines are built by a factory (the catalog's `engine` entries, `EngineFactory`) from the loaded
policy, its tokenizer and `EngineOptions`, one dataclass resolved once from the suite; each engine
reads the fields that concern it (the `hf` engine none of them).

    hf.py              sampling from the policy module itself, a lean decode loop with a KV cache
    vllm.py            a colocated vLLM engine with its own copy of the weights (GPU, or vLLM's CPU build);
                       vllm_options.py, vllm_requests.py, vllm_weights.py, vllm_worker.py its parts
    weight_names.py    the policy's weights under checkpoint names, as an engine loads them
    demonstrations.py  gold demonstrations laid out as a rollout (supervised training)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from rlbench.config import Suite
from rlbench.rollout.vllm_options import VLLMOptions, vllm_options


@dataclass
class Rollout:
    input_ids: torch.Tensor  # [N, P + T]: left-padded prompt then right-padded completion
    attention_mask: torch.Tensor  # [N, P + T]
    prompt_width: int  # P: completion token t sits at column P + t
    completion_ids: torch.Tensor  # [N, T]
    completion_mask: torch.Tensor  # [N, T] float: 1 up to and including EOS
    logprobs: torch.Tensor  # [N, T] log-probs of the sampled tokens (0 where masked)
    texts: list[str]  # decoded completions (special tokens dropped, tags kept)
    truncated: torch.Tensor  # [N] bool: stopped by max_new_tokens, not EOS

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1).long()

    @property
    def num_tokens(self) -> int:
        return int(self.completion_mask.sum().item())

    def select(self, index: torch.Tensor) -> Rollout:
        """The rows `index` of every per-completion field (a minibatch)."""
        idx = index.tolist()
        return Rollout(
            self.input_ids[index], self.attention_mask[index], self.prompt_width, self.completion_ids[index],
            self.completion_mask[index], self.logprobs[index], [self.texts[i] for i in idx], self.truncated[index],
        )


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False
    ignore_eos: bool = False  # keep sampling past EOS: every completion runs to max_new_tokens


class RolloutEngine(Protocol):
    name: str
    has_own_weights: bool  # True: it samples from its own copy (vLLM), so the loop recomputes old log-probs

    def generate(self, prompt_ids: list[list[int]], n: int, params: SamplingParams,
                 seed: int | None = None) -> Rollout:
        """Sample `n` completions of each prompt: len(prompt_ids) * n rows, a prompt's n rows adjacent."""
        ...

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Make the engine sample from the policy's current weights."""
        ...

    def memory_bytes(self) -> dict[str, int]:
        """Memory the engine holds of its own (weights, KV cache); empty when it shares the policy's."""
        ...


@dataclass(frozen=True)
class EngineOptions:
    """Everything an engine is built with besides the policy and its tokenizer."""

    model_path: str | None = None  # the policy's directory, for an engine that loads its own copy
    dtype: str = "float32"  # model.dtype: the engine's weights
    max_model_len: int | None = None  # longest prompt + completion it must hold
    seed: int = 0
    trust_remote_code: bool = False
    vllm: VLLMOptions = field(default_factory=VLLMOptions)

    @classmethod
    def from_suite(cls, suite: Suite, model_path: str | Path, seed: int) -> EngineOptions:
        model, rollout = suite.model, suite.rollout
        return cls(model_path=str(model_path), dtype=model.dtype,
                   max_model_len=model.max_prompt_tokens + rollout.max_new_tokens, seed=seed,
                   trust_remote_code=model.trust_remote_code,
                   vllm=vllm_options(suite))


class EngineFactory(Protocol):
    """A catalog `engine` entry: the engine for a loaded policy."""

    def __call__(self, policy: torch.nn.Module, tokenizer: Any, options: EngineOptions) -> RolloutEngine: ...
