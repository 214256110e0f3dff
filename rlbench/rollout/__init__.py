"""Rollout engines: how completions are sampled. Algorithms only ever see `RolloutEngine`.

An engine takes prompts (token ids) and returns a `Rollout`: prompt and completion ids in one
left-padded/right-padded batch, the per-token log-probabilities of the sampled tokens under the
sampling distribution (logits / temperature, before top-p filtering, as the trainer computes
them), completion lengths and truncation flags. `sync_weights(policy)` is called after every
update; the `hf` engine samples from the policy module itself, so it has nothing to copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


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
