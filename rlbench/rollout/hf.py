"""The `hf` engine: batched sampling straight from the policy module, with a KV cache.

A lean decode loop instead of `model.generate`: it returns the sampled tokens' log-probabilities
as it goes (no second forward pass to get them), stops as soon as every row has emitted EOS,
and adds no per-token logits processors beyond temperature and top-p. A group's prompt is
prefilled once. Each token comes from a decoder: for Llama-architecture models the lean one in
`rlbench.models.lean_llama` (preallocated cache, the group's prompt keys held once, a few tensor operations per
layer), for anything else the module's own forward with its cache (`ModuleDecoder`). Both
compute the same distribution; `lean=False` forces the module's forward. `make_decoder` is the
default decoder factory; an engine can be given another (the estimator's wraps it to skip the
middle of the decode loop on fake tensors).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from rlbench.device import module_device
from rlbench.models.batching import left_pad, position_ids_from_mask
from rlbench.models.forward import cache_argument, keep_logits, returned_cache
from rlbench.models.lean_llama import LlamaDecoder, cast_linears, llama_parts
from rlbench.rollout import EngineOptions, Rollout, SamplingParams


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask logits outside the smallest set of tokens whose probability mass reaches top_p."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop = cumulative - sorted_logits.softmax(-1) > top_p  # keep the token that crosses top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def inverse_cdf_sample(logp: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row [N] drawn from exp(logp) [N, V] (normalised or not; -inf never drawn), by the
    inverse of the cumulative distribution: one uniform number per row. `torch.multinomial` draws an
    exponential per vocabulary entry instead: measured 69 ms per call at 8 x 151,936 on one CPU
    thread, against 0.9 ms for this. The cumulative sum is float64, so its rounding over 150,000
    terms stays far below the resolution of a draw."""
    cdf = logp.exp().double().cumsum(-1)
    draw = torch.rand(cdf.shape[0], 1, generator=generator, dtype=torch.float64, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, draw, right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)


class ModuleDecoder:
    """Sampling through the module's own forward and its cache: any architecture, one call per token."""

    def __init__(self, model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 prompt_positions: torch.Tensor, group: int) -> None:
        self.model, self.group = model, group
        self.prompt_ids, self.attention, self.positions = prompt_ids, prompt_mask, prompt_positions
        self.next_position = prompt_positions[:, -1:] + 1
        self.cache, self.cache_name = None, cache_argument(model)  # the name asked once, not at every token

    def prefill(self) -> torch.Tensor:
        heads = slice(0, self.prompt_ids.shape[0], self.group)  # each distinct prompt once
        # Only the last position's logits are read: a model that can makes only those, not
        # [prompts, prompt tokens, vocabulary] (64 prompts of 256 tokens at Qwen2.5's 151,936
        # entries: 9.3 GiB in float32).
        out = self.model(input_ids=self.prompt_ids[heads], attention_mask=self.attention[heads],
                         position_ids=self.positions[heads], use_cache=True, **keep_logits(self.model, 1))
        self.cache, logits = returned_cache(out), out.logits[:, -1]
        if self.group > 1:  # repeat each prompt's cache for its group
            self.cache.batch_repeat_interleave(self.group)
            logits = logits.repeat_interleave(self.group, dim=0)
        return logits

    def step(self, tokens: torch.Tensor, alive: torch.Tensor | None = None) -> torch.Tensor:
        """Feed one token per row [N] (`alive` is not used: every row is run); the next logits [N, V]."""
        self.attention = torch.cat([self.attention, self.attention.new_ones((len(tokens), 1))], dim=-1)
        out = self.model(input_ids=tokens[:, None], attention_mask=self.attention, position_ids=self.next_position,
                         use_cache=True, **{self.cache_name: self.cache})
        self.cache = returned_cache(out)
        self.next_position = self.next_position + 1
        return out.logits[:, -1]


DecoderFactory = Callable[..., LlamaDecoder | ModuleDecoder]
"""`make_decoder`'s signature: (model, prompt_ids, prompt_mask, group, max_new_tokens, lean) -> a
decoder with `prefill()` and `step(tokens, alive)`."""


def make_decoder(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, group: int,
                 max_new_tokens: int, lean: bool = True) -> LlamaDecoder | ModuleDecoder:
    """The lean decoder where it reproduces the model's forward (Llama architectures), else the module's own.

    Under `torch.autocast` (precision bf16-mixed) the lean decoder's linear weights are cast to the
    autocast dtype once here, rather than by autocast at every token: the same numbers, and the
    bf16 copy is this call's transient memory."""
    positions = position_ids_from_mask(prompt_mask)
    parts = llama_parts(model) if lean else None
    if parts is not None:
        device_type = parts.embed.device.type
        if torch.is_autocast_enabled(device_type):
            parts = cast_linears(parts, torch.get_autocast_dtype(device_type))
        return LlamaDecoder(parts, prompt_ids, prompt_mask, positions, group, max_new_tokens)
    return ModuleDecoder(model, prompt_ids, prompt_mask, positions, group)


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    params: SamplingParams,
    eos_id: int,
    pad_id: int,
    generator: torch.Generator | None = None,
    lean: bool = True,
    group: int = 1,
    decoder_factory: DecoderFactory | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode up to max_new_tokens (exactly that many with `params.ignore_eos`).
    Returns (tokens [N,T], logprobs [N,T], mask [N,T], truncated [N]).

    Rows come in runs of `group` copies of one prompt, whose prompt is prefilled once.
    `lean=False` forces the module's own forward (the lean decoder is used only where it applies).
    `decoder_factory` defaults to `make_decoder`.
    """
    n = prompt_ids.shape[0]
    assert n % group == 0, f"{n} rows are not whole groups of {group}"
    decoder = (decoder_factory or make_decoder)(model, prompt_ids, prompt_mask, group, params.max_new_tokens, lean)
    logits = decoder.prefill()
    finished = torch.zeros(n, dtype=torch.bool, device=prompt_ids.device)
    pads = torch.full((n,), pad_id, dtype=torch.long, device=prompt_ids.device)
    tokens, logprobs, masks = [], [], []
    for step in range(params.max_new_tokens):
        logits = logits.float()
        logp_all = F.log_softmax(logits / params.temperature if params.temperature != 1.0 else logits, dim=-1)
        if params.greedy:
            token = logp_all.argmax(-1)
        else:
            token = inverse_cdf_sample(top_p_filter(logp_all, params.top_p), generator)
        alive = ~finished
        token = torch.where(alive, token, pads)
        tokens.append(token)
        logprobs.append(torch.where(alive, logp_all.gather(-1, token[:, None]).squeeze(-1), 0.0))
        masks.append(alive)
        if not params.ignore_eos:
            finished = finished | (token == eos_id)
        if step == params.max_new_tokens - 1 or bool(finished.all()):
            break
        logits = decoder.step(token, ~finished)
    return torch.stack(tokens, 1), torch.stack(logprobs, 1), torch.stack(masks, 1).float(), ~finished


class HFEngine:
    """Samples from the policy module in place (shares its weights: no memory of its own)."""

    name = "hf"

    def __init__(self, policy: torch.nn.Module, tokenizer, lean: bool = True,
                 decoder_factory: DecoderFactory | None = None) -> None:
        """`lean=False` samples through the module's own forward even where the lean decoder applies;
        `decoder_factory` replaces `make_decoder`."""
        self.policy = policy
        self.tokenizer = tokenizer
        self.lean = lean
        self.decoder_factory = decoder_factory

    has_own_weights = False

    def generate(self, prompt_ids: list[list[int]], n: int, params: SamplingParams,
                 seed: int | None = None) -> Rollout:
        device = module_device(self.policy)
        generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
        ids, mask = left_pad([p for p in prompt_ids for _ in range(n)], self.tokenizer.pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        was_training = self.policy.training
        self.policy.eval()
        try:
            tokens, logprobs, comp_mask, truncated = sample(
                self.policy, ids, mask, params, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id, generator,
                self.lean, group=n, decoder_factory=self.decoder_factory,
            )
        finally:
            self.policy.train(was_training)
        texts = self.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        return Rollout(
            input_ids=torch.cat([ids, tokens], dim=1),
            attention_mask=torch.cat([mask, comp_mask.long()], dim=1),
            prompt_width=ids.shape[1],
            completion_ids=tokens,
            completion_mask=comp_mask,
            logprobs=logprobs,
            texts=texts,
            truncated=truncated,
        )

    def sync_weights(self, policy: torch.nn.Module) -> None:
        self.policy = policy

    def memory_bytes(self) -> dict[str, int]:
        return {}


def make_hf_engine(policy: torch.nn.Module, tokenizer, options: EngineOptions) -> HFEngine:
    """The catalog's `hf` entry: it samples from the policy itself, so no option concerns it."""
    return HFEngine(policy, tokenizer)
