"""What stands in for the parts of a run that need real values: the tokenizer, the middle of the
decode loop, and an engine with weights of its own (see `rlbench.estimate.simulate`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from rlbench.estimate.trace import PhaseTracker


class WorstCaseTokenizer:
    """Stands in for a tokenizer: every prompt encodes to `prompt_tokens` ids, or to its length in
    `lengths` (text -> tokens) when that has it (one distinct first id per distinct text, so a
    group's rows share a prompt and groups do not); decoding gives ''."""

    chat_template = None
    padding_side = "left"
    pad_token = "<pad>"
    eos_token = "<eos>"

    def __init__(self, vocab_size: int, prompt_tokens: int, pad_id: int, eos_id: int, bos_id: int | None,
                 lengths: dict[str, int] | None = None) -> None:
        self.vocab_size, self.prompt_tokens, self.lengths = vocab_size, prompt_tokens, lengths or {}
        self.pad_token_id, self.eos_token_id, self.bos_token_id = pad_id, eos_id, bos_id
        special = {pad_id, eos_id, bos_id}
        self.ordinary = [i for i in range(min(vocab_size, 4096)) if i not in special]
        self.worst_token = self.ordinary[0]
        self._texts: dict[str, int] = {}

    def __len__(self) -> int:
        return self.vocab_size

    def _encode(self, text: str) -> list[int]:
        first = self.ordinary[self._texts.setdefault(text, len(self._texts)) % len(self.ordinary)]
        return [first] + [self.worst_token] * (self.lengths.get(text, self.prompt_tokens) - 1)

    def __call__(self, texts: list[str] | str, **_: Any) -> dict[str, Any]:
        return {"input_ids": [self._encode(t) for t in texts] if isinstance(texts, list) else self._encode(texts)}

    def batch_decode(self, sequences: Any, **_: Any) -> list[str]:
        return [""] * len(sequences)

    def decode(self, *_: Any, **__: Any) -> str:
        return ""


class FastForwardDecoder:
    """Wraps the decoder `rlbench.rollout.hf.sample` uses. The first and the last decode steps run
    for real; the steps between return the previous logits and only advance the decoder's position
    (the lean decoder preallocates its cache for every new token; a module decoder's cache is
    grown to the length it would have reached). Also labels the decoder's caches as KV cache.
    Whether the steps can be skipped is decided at the first step: a module decoder makes its cache
    in `prefill` (none there, as with `use_cache=False`: every step runs)."""

    def __init__(self, decoder: Any, tracker: PhaseTracker, max_new_tokens: int, skip: bool) -> None:
        self.decoder, self.tracker, self.max_new_tokens = decoder, tracker, max_new_tokens
        self.skip = skip
        self.calls, self.skipped, self.ran, self.logits = 0, 0, 0, None  # ran: steps run for real

    def _label_cache(self) -> None:
        for tensor in _cache_tensors(self.decoder):
            self.tracker.relabel(tensor, self.tracker.phase_role, "kv_cache")

    def prefill(self) -> torch.Tensor:
        self._label_cache()
        self.logits = self.decoder.prefill()
        self._label_cache()
        return self.logits

    def step(self, tokens: torch.Tensor, alive: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            self.skip = self.skip and (hasattr(self.decoder, "steps") or _module_cache_layers(self.decoder) is not None)
        last = self.max_new_tokens - 1  # sample() calls step at most max_new_tokens - 1 times
        if self.skip and 1 < self.calls < last:
            self.skipped += 1
            if hasattr(self.decoder, "steps"):
                self.decoder.steps += 1
            return self.logits
        if self.skipped and not hasattr(self.decoder, "steps"):
            _grow_module_cache(self.decoder, self.skipped)
            self._label_cache()  # the grown cache is KV cache, as the one it replaces was
            self.skipped = 0
        self.logits = self.decoder.step(tokens, alive)
        self.ran += 1
        self._label_cache()
        return self.logits


def _module_cache_layers(decoder: Any) -> list[Any] | None:
    layers = getattr(getattr(decoder, "cache", None), "layers", None)
    if not hasattr(decoder, "attention") or not hasattr(decoder, "next_position"):
        return None
    return layers if layers is not None and all(hasattr(x, "keys") for x in layers) else None


def _grow_module_cache(decoder: Any, n: int) -> None:
    """A module decoder's state after `n` more tokens: keys/values, attention mask and position."""
    for layer in _module_cache_layers(decoder) or ():
        for name in ("keys", "values"):
            t = getattr(layer, name)
            setattr(layer, name, torch.cat([t, t.new_zeros(*t.shape[:-2], n, t.shape[-1])], dim=-2))
    decoder.attention = torch.cat([decoder.attention, decoder.attention.new_ones(decoder.attention.shape[0], n)], -1)
    decoder.next_position = decoder.next_position + n


def _cache_tensors(decoder: Any) -> Iterator[torch.Tensor]:
    if hasattr(decoder, "steps"):  # the lean decoder
        yield decoder.keys
        yield decoder.values
        yield from decoder.prompt_keys
        yield from decoder.prompt_values
        return
    for layer in _module_cache_layers(decoder) or ():
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                yield t


class SeparateEngine:
    """Stands in for an engine that holds its own weights and KV cache (vLLM): its memory is its
    reservation (`rollout.gpu_memory_utilization` of the card, added by `rlbench.estimate.fit`),
    not the policy's; it returns worst-case rollouts without running the policy, and the loop then
    recomputes the old log-probs with the policy (`has_own_weights`), as it does with vLLM."""

    name = "separate"
    has_own_weights = True

    def __init__(self, tokenizer: WorstCaseTokenizer, device: torch.device) -> None:
        self.tokenizer, self.device = tokenizer, device

    def generate(self, prompt_ids: list[list[int]], n: int, params: Any, seed: int | None = None) -> Any:
        from rlbench.models.batching import left_pad
        from rlbench.rollout import Rollout

        ids, mask = left_pad([p for p in prompt_ids for _ in range(n)], self.tokenizer.pad_token_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        rows, width = ids.shape[0], params.max_new_tokens
        tokens = torch.full((rows, width), self.tokenizer.worst_token, dtype=torch.long, device=self.device)
        completion_mask = torch.ones(rows, width, dtype=torch.bool, device=self.device).float()  # real, as masks are
        return Rollout(torch.cat([ids, tokens], dim=1), torch.cat([mask, completion_mask.long()], dim=1), ids.shape[1],
                       tokens, completion_mask, torch.zeros(rows, width, device=self.device), [""] * rows,
                       torch.ones(rows, dtype=torch.bool, device=self.device))

    def sync_weights(self, policy: Any) -> None:
        pass

    def memory_bytes(self) -> dict[str, int]:
        return {}
