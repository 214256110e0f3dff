"""Forward passes shared by every role: per-token log-probs of completions, with prompt sharing.

A group of G completions of one prompt shares that prompt. With `group_size > 1` the prompt is run
once per group (with gradients, when training), its key/value cache is repeated for the group's
G rows, and only the completion tokens are run per row. The result equals a full forward of
every row (the same attention, positions and masks), at a fraction of the FLOPs when prompts are
longer than completions: prompt positions cost 1/G of what they cost row by row. A module training
under gradient checkpointing keeps no cache, so it runs every row in full (`recomputes_in_backward`).

For Llama-architecture models the forward is `rlbench.models.lean_llama`'s: the same math on the
module's weights, with per-token work done on real tokens only (no compute on padding after EOS
or on left padding). `packed_logits` returns the logits of real completion tokens only, which is
what training needs; `completion_logits` and `completion_logprobs` give the padded [N, T] layout.
`lean=False` forces the module's own forward.

Lean log-probs: `completion_logprobs` (and `completion_logprobs_and_entropy`, what the update
needs) never hold full-vocabulary logits for all tokens at once. On the lean path they take the
final hidden states and apply the LM head a chunk of tokens at a time (`LOGITS_CHUNK_BYTES` of
float32 logits per chunk: 110 tokens at a 151,936-token vocabulary, every token at once for the
embedded model); with gradients each chunk is checkpointed, so its logits are recomputed in the
backward pass instead of kept. Same numbers as the whole-batch computation (the chunks are rows of
the same matrix products).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from rlbench.models.batching import position_ids_from_mask
from rlbench.models.lean_llama import llama_parts, packed_completion_hidden, packed_completion_logits

LOGITS_CHUNK_BYTES = 64 * 2**20  # float32 logits computed at once by the chunked log-probs


def recomputes_in_backward(model: torch.nn.Module) -> bool:
    """Whether `model` is training with gradient (activation) checkpointing on: its layers then
    run without a key/value cache (transformers drops it, since a layer recomputed in the backward
    pass would append to the cache a second time), so a prompt cannot be run once and shared."""
    return model.training and any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def _forward_names(forward: Callable, argument: str) -> bool:
    try:
        return argument in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


def keep_logits(model: torch.nn.Module, positions: int) -> dict[str, int]:
    """The forward argument that makes logits for the last `positions` positions only (transformers'
    `logits_to_keep`), where `model`'s forward names it (a wrapper taking **kwargs may not pass it
    on); otherwise none, and the model makes them all."""
    return {"logits_to_keep": positions} if _forward_names(model.forward, "logits_to_keep") else {}


def cache_argument(model: torch.nn.Module) -> str:
    """The forward argument that passes a key/value cache: `cache` where the model's forward names
    it (transformers 5.2x, which warns at every call given the older name), else `past_key_values`.
    A LoRA model (peft) passes its keyword arguments on to the model it wraps, whose forward decides."""
    base = getattr(model, "get_base_model", None)
    return "cache" if _forward_names(base().forward if callable(base) else model.forward, "cache") else "past_key_values"


def returned_cache(out: Any) -> Any:
    """The key/value cache a forward returned, under either name (reading `past_key_values` of a
    transformers 5.2x output warns)."""
    cache = out.get("cache") if "cache" in out else None
    return cache if cache is not None else out.get("past_key_values")


def _module_completion_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                              prompt_width: int, group_size: int) -> torch.Tensor:
    positions = position_ids_from_mask(attention_mask)
    # Only the positions that predict a completion token need logits (P-1 .. the last): a model that
    # can makes only those, not the prompt's too.
    if group_size == 1 or input_ids.shape[1] == prompt_width or recomputes_in_backward(model):
        kept = input_ids.shape[1] - prompt_width + 1
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False,
                       **keep_logits(model, kept)).logits
        return logits[:, -kept: -1]
    n, p = input_ids.shape[0], prompt_width
    assert n % group_size == 0, f"{n} rows do not split into groups of {group_size}"
    heads = slice(0, n, group_size)
    prefix = model(input_ids=input_ids[heads, :p], attention_mask=attention_mask[heads, :p],
                   position_ids=positions[heads, :p], use_cache=True, **keep_logits(model, 1))
    cache = returned_cache(prefix)
    assert cache is not None, f"{type(model).__name__} returned no key/value cache for the shared prompts"
    cache.batch_repeat_interleave(group_size)
    rest = model(input_ids=input_ids[:, p:-1], attention_mask=attention_mask[:, :-1],
                 position_ids=positions[:, p:-1], use_cache=True, **{cache_argument(model): cache}).logits
    first = prefix.logits[:, -1:].repeat_interleave(group_size, dim=0)
    return torch.cat([first, rest], dim=1)


def packed_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  prompt_width: int, group_size: int = 1, lean: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the real completion tokens only: ([n, V], index [n] into the flattened N x T).

    Real tokens are those with attention_mask 1 after the prompt's P columns, in row-major order;
    row r's token t has index r * T + t. With group_size G > 1, rows i*G .. i*G+G-1 must hold the
    same prompt (as a rollout of groups does).
    """
    n, t = input_ids.shape[0], input_ids.shape[1] - prompt_width
    parts = llama_parts(model) if lean and t > 0 else None
    if parts is not None:
        positions = position_ids_from_mask(attention_mask)
        return packed_completion_logits(parts, input_ids, attention_mask, positions, prompt_width, group_size)
    logits = _module_completion_logits(model, input_ids, attention_mask, prompt_width, group_size)
    index = attention_mask[:, prompt_width:].flatten().nonzero().squeeze(1)
    return logits.reshape(n * t, -1).index_select(0, index), index


def completion_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      prompt_width: int, group_size: int = 1, lean: bool = True) -> torch.Tensor:
    """Logits that predict each completion token: [N, T, V] (positions P-1 .. P+T-2).

    With group_size G > 1, rows i*G .. i*G+G-1 must hold the same prompt (as a rollout of groups does).
    Where the completion's attention mask is 0 the values are unspecified (zeros on the lean path).
    """
    if lean and llama_parts(model) is not None:
        logits, index = packed_logits(model, input_ids, attention_mask, prompt_width, group_size)
        return scatter_rows(logits, index, (input_ids.shape[0], input_ids.shape[1] - prompt_width))
    return _module_completion_logits(model, input_ids, attention_mask, prompt_width, group_size)


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature) at `tokens`, without materialising the full log-softmax."""
    return _scaled_logprobs(_scaled(logits.float(), temperature), tokens)[0]


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature; the logits themselves at temperature 1 (x / 1 is x: no pass over them)."""
    return logits if temperature == 1.0 else logits / temperature


def _scaled_logprobs(scaled: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log softmax(scaled) at `tokens`, logsumexp(scaled)) per row."""
    lse = torch.logsumexp(scaled, dim=-1)
    return scaled.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - lse, lse


def scatter_rows(values: torch.Tensor, index: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Packed per-token values [n, ...] placed at flat `index` of a zero tensor [N, T, ...] (`shape`
    is (N, T); trailing dimensions, such as the vocabulary of logits, are kept)."""
    n, t = shape
    rest = values.shape[1:]
    return values.new_zeros(n * t, *rest).index_copy(0, index, values).view(n, t, *rest)


def _logprobs_and_entropy(scores: torch.Tensor, tokens: torch.Tensor, temperature: float,
                          head: Callable[[torch.Tensor], torch.Tensor] | None,
                          entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(logits / T) at `tokens` and the entropy of softmax(logits) (no gradient; None
    without `entropy`), for logits = head(scores), or scores themselves when head is None. At T = 1
    the entropy reuses the log-probs' logsumexp (one pass over the logits fewer)."""
    logits = (scores if head is None else head(scores)).float()
    logprobs, lse = _scaled_logprobs(_scaled(logits, temperature), tokens)
    if not entropy:
        return logprobs, None
    with torch.no_grad():  # -sum p log p = logsumexp(l) - sum p l
        lse = lse.detach() if temperature == 1.0 else torch.logsumexp(logits, -1)
        return logprobs, lse - (logits.softmax(-1) * logits).sum(-1)


def token_logprobs(scores: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0,
                   head: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   vocab_size: int | None = None, entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs [n], entropies [n], or None without `entropy`) of `tokens` [n] from final hidden
    states [n, H] through the LM `head` (or from logits [n, V] when head is None),
    `LOGITS_CHUNK_BYTES` of logits at a time.

    With gradients, each chunk runs under activation checkpointing: its logits are freed after the
    forward and recomputed in the backward pass, so at most one chunk's logits exist at a time.
    Entropies carry no gradient; the reference's and old log-probs need none (`entropy=False`).
    """
    vocab = vocab_size or scores.shape[-1]
    rows = max(1, LOGITS_CHUNK_BYTES // (4 * vocab))
    if len(tokens) <= rows:
        return _logprobs_and_entropy(scores, tokens, temperature, head, entropy)
    grad = torch.is_grad_enabled()
    outs = []
    for start in range(0, len(tokens), rows):
        args = (scores[start:start + rows], tokens[start:start + rows], temperature, head, entropy)
        outs.append(checkpoint(_logprobs_and_entropy, *args, use_reentrant=False) if grad
                    else _logprobs_and_entropy(*args))
    return torch.cat([lp for lp, _ in outs]), torch.cat([ent for _, ent in outs]) if entropy else None


def packed_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    prompt_width: int, completion_ids: torch.Tensor, temperature: float = 1.0,
                    group_size: int = 1, lean: bool = True,
                    entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(log-probs [n], entropies [n] or None without `entropy`, index [n]) of the real completion
    tokens (layout of `packed_logits`); on the lean path the LM head runs a chunk of tokens at a
    time (`token_logprobs`)."""
    t = input_ids.shape[1] - prompt_width
    parts = llama_parts(model) if lean and t > 0 else None
    if parts is not None:
        hidden, index = packed_completion_hidden(parts, input_ids, attention_mask,
                                                 position_ids_from_mask(attention_mask), prompt_width, group_size)
        scores, head, vocab = hidden, parts.lm_head, parts.lm_head.weight.shape[0]
    else:
        scores, index = packed_logits(model, input_ids, attention_mask, prompt_width, group_size, lean)
        head, vocab = None, None
    logprobs, entropies = token_logprobs(scores, completion_ids.flatten()[index], temperature, head, vocab, entropy)
    return logprobs, entropies, index


def completion_logprobs_and_entropy(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                    prompt_width: int, completion_ids: torch.Tensor, temperature: float = 1.0,
                                    group_size: int = 1, lean: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs [N, T] (as `completion_logprobs`) and the entropy of the next-token
    distribution at each position [N, T] (before temperature, no gradient); 0 where masked."""
    logprobs, entropy, index = packed_logprobs(model, input_ids, attention_mask, prompt_width, completion_ids,
                                               temperature, group_size, lean)
    shape = tuple(completion_ids.shape)
    return scatter_rows(logprobs, index, shape), scatter_rows(entropy, index, shape)


def completion_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        prompt_width: int, completion_ids: torch.Tensor, temperature: float = 1.0,
                        group_size: int = 1, lean: bool = True) -> torch.Tensor:
    """Per-token log-probs [N, T] of the completion tokens under `model` (same scaling as sampling);
    0 where the completion's attention mask is 0. Full-vocabulary logits are never held for all
    tokens at once on the lean path, and no entropy is computed."""
    logprobs, _, index = packed_logprobs(model, input_ids, attention_mask, prompt_width, completion_ids, temperature,
                                         group_size, lean, entropy=False)
    return scatter_rows(logprobs, index, tuple(completion_ids.shape))
