"""Forward passes shared by every role: per-token log-probs of completions, with prompt sharing.

A group of G completions of one prompt shares that prompt. With `group_size > 1` the prompt is run
once per group (with gradients, when training), its key/value cache is repeated for the group's
G rows, and only the completion tokens are run per row. The result equals a full forward of
every row (the same attention, positions and masks), at a fraction of the FLOPs when prompts are
longer than completions: prompt positions cost 1/G of what they cost row by row.

For Llama-architecture models the forward is `rlbench.models.lean_llama`'s: the same math on the
module's weights, with per-token work done on real tokens only (no compute on padding after EOS
or on left padding). `packed_logits` returns the logits of real completion tokens only, which is
what training needs; `completion_logits` and `completion_logprobs` give the padded [N, T] layout.
`lean=False` forces the module's own forward.
"""

from __future__ import annotations

import torch

from rlbench.models.batching import position_ids_from_mask
from rlbench.models.lean_llama import llama_parts, packed_completion_logits


def _module_completion_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                              prompt_width: int, group_size: int) -> torch.Tensor:
    positions = position_ids_from_mask(attention_mask)
    if group_size == 1 or input_ids.shape[1] == prompt_width:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits
        return logits[:, prompt_width - 1: -1]
    n, p = input_ids.shape[0], prompt_width
    assert n % group_size == 0, f"{n} rows do not split into groups of {group_size}"
    heads = slice(0, n, group_size)
    prefix = model(input_ids=input_ids[heads, :p], attention_mask=attention_mask[heads, :p],
                   position_ids=positions[heads, :p], use_cache=True)
    cache = prefix.past_key_values
    cache.batch_repeat_interleave(group_size)
    rest = model(input_ids=input_ids[:, p:-1], attention_mask=attention_mask[:, :-1],
                 position_ids=positions[:, p:-1], past_key_values=cache, use_cache=True).logits
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
    logits = logits.float() / temperature
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def scatter_rows(values: torch.Tensor, index: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Packed per-token values [n, ...] placed at flat `index` of a zero tensor [N, T, ...] (`shape`
    is (N, T); trailing dimensions, such as the vocabulary of logits, are kept)."""
    n, t = shape
    rest = values.shape[1:]
    return values.new_zeros(n * t, *rest).index_copy(0, index, values).view(n, t, *rest)


def completion_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        prompt_width: int, completion_ids: torch.Tensor, temperature: float = 1.0,
                        group_size: int = 1, lean: bool = True) -> torch.Tensor:
    """Per-token log-probs [N, T] of the completion tokens under `model` (same scaling as sampling);
    0 where the completion's attention mask is 0."""
    logits, index = packed_logits(model, input_ids, attention_mask, prompt_width, group_size, lean)
    logprobs = gather_logprobs(logits, completion_ids.flatten()[index], temperature)
    return scatter_rows(logprobs, index, tuple(completion_ids.shape))
