"""A lean forward for Llama-architecture models, on the Hugging Face module's own weights.

On a small model the cost of `model(...)` is mostly per-call overhead: the cache object, mask
building, rotary embeddings recomputed for every call, a dozen Python layers per decoder block.
This module runs the same math in a few tensor operations per layer, reading the weights straight
from the module (no copy, so every optimizer step is seen at once):

- `LlamaDecoder`: sampling. The prompts of a group are prefilled once; their keys and values are
  kept once per group (not repeated G times), and each decoded token attends to them and to its
  own row's keys in a cache preallocated for `max_new_tokens`. Rotary tables are computed once.
- `packed_completion_logits` (and `packed_completion_hidden`, the same without the LM head, for
  scalar heads): the training and scoring forward. Per-token work (norms,
  projections, MLP, LM head) runs on the real tokens only, packed, so padding after EOS and left
  padding of prompts cost nothing there; attention runs on the padded layout. Prompts are run once
  per group, as in `rlbench.models.forward`.

The math is the module's own (RMSNorm in float32, rotary embeddings, grouped-query attention,
SiLU MLP, the embedding's padding_idx); `llama_parts(model)` returns None for anything it does
not reproduce exactly (other architectures, LoRA-wrapped or quantized layers, dynamic rotary
scaling, sliding windows, gradient checkpointing, attention dropout while training, weights
sharded by FSDP2 outside an `unshard()`), and callers then use the module's own forward.
Positions are passed in by the caller (positions skip left padding, as
`rlbench.models.batching.position_ids_from_mask` computes them).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")  # inverse frequencies fixed at load time
COMPACT_BELOW = 0.75  # decode only the live rows once at most this fraction of rows is still generating


@dataclass(frozen=True)
class Linear:
    weight: torch.Tensor
    bias: torch.Tensor | None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


@dataclass(frozen=True)
class Block:
    """One decoder layer's weights."""

    input_norm: torch.Tensor
    q: Linear
    k: Linear
    v: Linear
    o: Linear
    post_norm: torch.Tensor
    gate: Linear
    up: Linear
    down: Linear


@dataclass(frozen=True)
class LlamaParts:
    """References to a Llama-architecture module's weights and the constants of its forward."""

    embed: torch.Tensor
    padding_idx: int | None
    blocks: tuple[Block, ...]
    norm: torch.Tensor
    lm_head: Linear | None  # None for a bare backbone (LlamaModel), as the scalar-head models hold
    inv_freq: torch.Tensor
    rope_scaling: float
    eps: float
    heads: int
    kv_heads: int
    head_dim: int
    scaling: float

    @property
    def group_heads(self) -> int:
        """Query heads per key/value head (grouped-query attention)."""
        return self.heads // self.kv_heads


def _linear(module: nn.Module) -> Linear | None:
    return Linear(module.weight, module.bias) if type(module) is nn.Linear else None


def llama_parts(model: nn.Module) -> LlamaParts | None:
    """The weights of a stock Llama/Qwen2 causal LM (or of its bare backbone, with no LM head), or
    None when the lean forward would not equal the module's own forward (then use the module)."""
    config = getattr(model, "config", None)
    classes = {cls.__name__ for cls in type(model).__mro__}  # FSDP2 subclasses the module's class
    backbone = bool(classes & {"LlamaModel", "Qwen2Model"})
    inner = model if backbone else getattr(model, "model", None)
    if config is None or inner is None or getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return None
    if not backbone and not classes & {"LlamaForCausalLM", "Qwen2ForCausalLM"}:
        return None  # e.g. a peft wrapper
    if getattr(config, "hidden_act", None) != "silu" or getattr(config, "pretraining_tp", 1) != 1:
        return None
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
        return None
    if getattr(model, "is_activation_checkpointing", getattr(model, "gradient_checkpointing", False)):
        return None
    if model.training and getattr(config, "attention_dropout", 0.0):
        return None
    rotary = getattr(inner, "rotary_emb", None)
    if rotary is None or getattr(rotary, "rope_type", None) not in STATIC_ROPE_TYPES:
        return None
    embed, lm_head = inner.embed_tokens, None if backbone else _linear(model.lm_head)
    if type(embed) is not nn.Embedding or (lm_head is None and not backbone):
        return None
    if any(hasattr(p, "to_local") for p in model.parameters()):
        return None  # sharded (FSDP2) outside an unshard: the module's forward gathers each layer
    blocks = []
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        linears = [_linear(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj,
                                         mlp.gate_proj, mlp.up_proj, mlp.down_proj)]
        norms = (layer.input_layernorm, layer.post_attention_layernorm)
        if any(lin is None for lin in linears) or any(not _is_rms_norm(n) for n in norms):
            return None
        q, k, v, o, gate, up, down = linears
        blocks.append(Block(norms[0].weight, q, k, v, o, norms[1].weight, gate, up, down))
    if not _is_rms_norm(inner.norm):
        return None
    eps = {n.variance_epsilon for layer in inner.layers
           for n in (layer.input_layernorm, layer.post_attention_layernorm)} | {inner.norm.variance_epsilon}
    if len(eps) != 1:
        return None
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return LlamaParts(
        embed=embed.weight, padding_idx=embed.padding_idx, blocks=tuple(blocks), norm=inner.norm.weight,
        lm_head=lm_head, inv_freq=rotary.inv_freq, rope_scaling=float(rotary.attention_scaling), eps=eps.pop(),
        heads=config.num_attention_heads, kv_heads=config.num_key_value_heads, head_dim=head_dim,
        scaling=inner.layers[0].self_attn.scaling,
    )


def cast_linears(parts: LlamaParts, dtype: torch.dtype) -> LlamaParts:
    """`parts` with every linear layer's weight and bias copied to `dtype` (the embedding, norms and
    rotary table kept): what `torch.autocast(dtype)` computes them in, cast once instead of at every
    call. The copies are new tensors: they follow later optimizer steps only if cast again."""

    def cast(linear: Linear) -> Linear:
        bias = None if linear.bias is None else linear.bias.to(dtype)
        return Linear(linear.weight.to(dtype), bias)

    blocks = tuple(replace(b, q=cast(b.q), k=cast(b.k), v=cast(b.v), o=cast(b.o), gate=cast(b.gate), up=cast(b.up),
                           down=cast(b.down)) for b in parts.blocks)
    return replace(parts, blocks=blocks, lm_head=None if parts.lm_head is None else cast(parts.lm_head))


def _is_rms_norm(module: nn.Module) -> bool:
    return type(module).__name__ in ("LlamaRMSNorm", "Qwen2RMSNorm") and hasattr(module, "variance_epsilon")


# ---- the pieces of a decoder layer ------------------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * x / rms(x), computed in float32 as the module does."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rotary_tables(parts: LlamaParts, length: int, dtype: torch.dtype,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin [length, head_dim] for positions 0 .. length-1.

    The signed sin is (-sin, sin) over the two halves, so that rotate_half(x) * sin, with
    rotate_half(x) = (-x2, x1), becomes roll(x, half) * signed_sin.
    """
    positions = torch.arange(length, device=device, dtype=torch.float32)
    freqs = positions[:, None] * parts.inv_freq.to(device=device, dtype=torch.float32)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos() * parts.rope_scaling, emb.sin() * parts.rope_scaling
    half = parts.head_dim // 2
    signed_sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
    return cos.to(dtype), signed_sin.to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [..., head_dim] (cos and signed_sin broadcast against x)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


def mlp(block: Block, h: torch.Tensor) -> torch.Tensor:
    return block.down(F.silu(block.gate(h)) * block.up(h))


def repeat_kv(x: torch.Tensor, times: int) -> torch.Tensor:
    """[B, kv_heads, S, D] -> [B, kv_heads * times, S, D], each key/value head repeated `times` times."""
    if times == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, times, s, d).reshape(b, h * times, s, d)


def causal_prompt_mask(mask: torch.Tensor) -> torch.Tensor:
    """[B, 1, P, P] bool: query j sees key i <= j when key i is a real token; every query also sees
    itself, so left-padding positions (whose outputs are never used) attend to something."""
    width = mask.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=mask.device).tril()
    eye = torch.eye(width, dtype=torch.bool, device=mask.device)
    return (causal & mask.bool()[:, None, None, :]) | eye


# ---- sampling ---------------------------------------------------------------------------------


class LlamaDecoder:
    """Prefill once per group, then one token per call, with a preallocated cache.

    prompt_ids/prompt_mask/prompt_positions are [N, P] with rows i*G .. i*G+G-1 holding the same
    prompt (G = group). Call `prefill()` once, then `step(tokens)` up to max_new_tokens - 1 times;
    each returns the next-token logits [N, V].
    """

    def __init__(self, parts: LlamaParts, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 prompt_positions: torch.Tensor, group: int, max_new_tokens: int) -> None:
        n, width = prompt_ids.shape
        assert n % group == 0, f"{n} rows do not split into groups of {group}"
        self.parts, self.group, self.rows, self.prompts = parts, group, n, n // group
        self.prompt_ids, self.prompt_mask = prompt_ids[::group], prompt_mask[::group]
        self.prompt_positions = prompt_positions[::group]
        self.first_position = prompt_positions[:, -1] + 1  # position of each row's first new token
        dtype, device = parts.embed.dtype, parts.embed.device
        self.cos, self.sin = rotary_tables(parts, int(self.first_position.max()) + max_new_tokens, dtype, device)
        cache_shape = (len(parts.blocks), n, parts.kv_heads, max_new_tokens, parts.head_dim)
        # Keys and values in the projections' dtype (bf16 after `cast_linears`: read only by bf16 matmuls)
        self.cache_dtype = parts.blocks[0].k.weight.dtype if parts.blocks else dtype
        self.keys = torch.zeros(cache_shape, dtype=self.cache_dtype, device=device)  # zeros: finished rows stay finite
        self.values = torch.zeros(cache_shape, dtype=self.cache_dtype, device=device)
        self.prompt_keys: list[torch.Tensor] = []  # per layer [B, kv_heads, D, P] (transposed), once per group
        self.prompt_values: list[torch.Tensor] = []
        bias = torch.zeros(self.prompts, 1, 1, width, dtype=dtype, device=device)
        self.prompt_bias = bias.masked_fill(self.prompt_mask[:, None, None, :] == 0, float("-inf"))
        self.steps = 0

    def prefill(self) -> torch.Tensor:
        p = self.parts
        b, width = self.prompt_ids.shape
        x = F.embedding(self.prompt_ids, p.embed, p.padding_idx)
        cos, sin = self.cos[self.prompt_positions][:, None], self.sin[self.prompt_positions][:, None]
        allowed = causal_prompt_mask(self.prompt_mask)
        for block in p.blocks:
            h = rms_norm(x, block.input_norm, p.eps)
            q = rotate(block.q(h).view(b, width, p.heads, p.head_dim).transpose(1, 2), cos, sin)
            k = rotate(block.k(h).view(b, width, p.kv_heads, p.head_dim).transpose(1, 2), cos, sin)
            v = block.v(h).view(b, width, p.kv_heads, p.head_dim).transpose(1, 2)
            self.prompt_keys.append(k.transpose(-1, -2).to(self.cache_dtype).contiguous())  # [B, kv, D, P]: q @ k^T
            self.prompt_values.append(v.to(self.cache_dtype).contiguous())
            out = F.scaled_dot_product_attention(q, repeat_kv(k, p.group_heads), repeat_kv(v, p.group_heads),
                                                 attn_mask=allowed, scale=p.scaling)
            x = x + block.o(out.transpose(1, 2).reshape(b, width, p.heads * p.head_dim))
            x = x + mlp(block, rms_norm(x, block.post_norm, p.eps))
        logits = p.lm_head(rms_norm(x[:, -1], p.norm, p.eps))
        return logits.repeat_interleave(self.group, dim=0) if self.group > 1 else logits

    def step(self, tokens: torch.Tensor, alive: torch.Tensor | None = None) -> torch.Tensor:
        """Feed one token per row [N]; return the logits of the next one [N, V].

        `alive` [N] bool marks the rows still generating. Once a quarter of the rows have finished,
        the per-token work (norms, projections, MLP, LM head) runs on the live rows only; finished
        rows get zero logits (their samples are discarded) and their cache slots are left as they are.
        """
        p, t, n = self.parts, self.steps, self.rows
        live = None
        if alive is not None and int(alive.sum()) <= COMPACT_BELOW * n:
            live = alive.nonzero().squeeze(1)
            tokens = tokens[live]
        m = n if live is None else len(live)
        position = self.first_position + t if live is None else self.first_position[live] + t
        cos, sin = self.cos[position][:, None], self.sin[position][:, None]  # [m, 1, D]
        x = F.embedding(tokens, p.embed, p.padding_idx)
        for layer, block in enumerate(p.blocks):
            h = rms_norm(x, block.input_norm, p.eps)
            q = rotate(block.q(h).view(m, p.heads, p.head_dim), cos, sin) * p.scaling
            k = rotate(block.k(h).view(m, p.kv_heads, p.head_dim), cos, sin)
            v = block.v(h).view(m, p.kv_heads, p.head_dim)
            k, v = k.to(self.cache_dtype), v.to(self.cache_dtype)  # rotated keys are float32 under autocast
            if live is None:
                self.keys[layer, :, :, t], self.values[layer, :, :, t] = k, v
                out = self._attend(q, layer, t + 1)
            else:
                self.keys[layer][live, :, t], self.values[layer][live, :, t] = k, v
                out = self._attend(q.new_zeros(n, p.heads, p.head_dim).index_copy_(0, live, q), layer, t + 1)[live]
            x = x + block.o(out)
            x = x + mlp(block, rms_norm(x, block.post_norm, p.eps))
        self.steps += 1
        logits = p.lm_head(rms_norm(x, p.norm, p.eps))
        return logits if live is None else logits.new_zeros(n, logits.shape[-1]).index_copy_(0, live, logits)

    def _attend(self, q: torch.Tensor, layer: int, seen: int) -> torch.Tensor:
        """Attention of one query per row [N, H, D] (already scaled) over its group's prompt keys
        and its own first `seen` new keys, with one softmax over both. Returns [N, H * D]."""
        p = self.parts
        n, b, g, kv, rep, d = self.rows, self.prompts, self.group, p.kv_heads, p.group_heads, p.head_dim
        width = self.prompt_bias.shape[-1]
        # Prompt keys are stored once per group: fold the group's rows into the query axis.
        grouped = q.view(b, g, kv, rep, d).transpose(1, 2).reshape(b, kv, g * rep, d)
        prompt_scores = torch.matmul(grouped, self.prompt_keys[layer]) + self.prompt_bias
        prompt_scores = prompt_scores.view(b, kv, g, rep, width).transpose(1, 2).reshape(n, kv, rep, width)
        keys, values = self.keys[layer, :, :, :seen], self.values[layer, :, :, :seen]
        own_scores = torch.matmul(q.view(n, kv, rep, d), keys.transpose(-1, -2))  # [N, kv, rep, seen]
        probs = torch.cat((prompt_scores, own_scores), dim=-1).softmax(-1, dtype=torch.float32).to(q.dtype)
        prompt_probs = probs[..., :width].reshape(b, g, kv, rep, width).transpose(1, 2).reshape(b, kv, g * rep, width)
        out = torch.matmul(prompt_probs, self.prompt_values[layer])  # [B, kv, G * rep, D]
        out = out.view(b, kv, g, rep, d).transpose(1, 2).reshape(n, kv * rep * d)
        return out + torch.matmul(probs[..., width:], values).reshape(n, kv * rep * d)


# ---- training and scoring ---------------------------------------------------------------------


def packed_completion_logits(parts: LlamaParts, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                             positions: torch.Tensor, prompt_width: int,
                             group_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of every real completion token, packed: ([n, V], flat index [n] into N x T); see
    `packed_completion_hidden` for the layout."""
    assert parts.lm_head is not None, "a bare backbone has no LM head"
    hidden, index = packed_completion_hidden(parts, input_ids, attention_mask, positions, prompt_width, group_size)
    return parts.lm_head(hidden), index


def packed_completion_hidden(parts: LlamaParts, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                             positions: torch.Tensor, prompt_width: int,
                             group_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Final (normed) hidden states of the positions that predict each real completion token,
    packed: ([n, H], flat index [n] into N x T). The LM head of these gives the logits; a scalar
    head gives the value of the state before each token.

    input_ids, attention_mask, positions: [N, P + T], prompts left-padded in the first P columns,
    completions right-padded after them (attention_mask 0 after EOS). With group_size G > 1, rows
    i*G .. i*G+G-1 must share their prompt, which is then run once. Row r's completion token t
    (where attention_mask[r, P + t] is 1) is predicted by packed row k with index[k] = r * T + t,
    in row-major order.
    """
    p, g, width = parts, group_size, prompt_width
    n, total = input_ids.shape
    assert n % g == 0, f"{n} rows do not split into groups of {g}"
    b, t_max = n // g, total - width
    completion = attention_mask[:, width:].bool()  # [N, T]
    rows, cols = completion.nonzero(as_tuple=True)
    # Inputs: the distinct prompts' real tokens, then each completion token that predicts a later one.
    prompt_mask = attention_mask[::g, :width].bool()
    span = int(cols.max()) if len(cols) else 0  # completion columns fed as inputs: 0 .. span-1
    fed = completion[:, 1:span + 1]  # [N, span]: column c is fed when token c + 1 is real
    prompt_at = prompt_mask.flatten().nonzero().squeeze(1)  # into B x P
    fed_at = fed.flatten().nonzero().squeeze(1)  # into N x span
    ids = torch.cat((input_ids[::g, :width].flatten()[prompt_at], input_ids[:, width:width + span].flatten()[fed_at]))
    pos = torch.cat((positions[::g, :width].flatten()[prompt_at], positions[:, width:width + span].flatten()[fed_at]))
    cos, sin = rotary_tables(parts, int(pos.max()) + 1, parts.embed.dtype, parts.embed.device)
    cos, sin = cos[pos][:, None], sin[pos][:, None]  # [tokens, 1, D]
    n_prompt = len(prompt_at)
    prompt_allowed = causal_prompt_mask(prompt_mask)
    fed_allowed = torch.cat((prompt_mask.repeat_interleave(g, 0)[:, None, None, :].expand(n, 1, span, width),
                             torch.ones(span, span, dtype=torch.bool, device=ids.device).tril().expand(n, 1, span, span)),
                            dim=-1)

    def padded(x: torch.Tensor, at: torch.Tensor, batch: int, length: int, heads: int) -> torch.Tensor:
        """Packed [tokens, heads * D] -> [batch, heads, length, D], zeros where nothing was packed."""
        out = x.new_zeros(batch * length, x.shape[-1]).index_copy(0, at, x)
        return out.view(batch, length, heads, p.head_dim).transpose(1, 2)

    def packed(x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """[batch, heads, length, D] -> packed [tokens, heads * D] at `at`."""
        batch, heads, length, d = x.shape
        return x.transpose(1, 2).reshape(batch * length, heads * d).index_select(0, at)

    x = F.embedding(ids, p.embed, p.padding_idx)  # [tokens, hidden]
    for block in p.blocks:
        h = rms_norm(x, block.input_norm, p.eps)
        q = rotate(block.q(h).view(-1, p.heads, p.head_dim), cos, sin).flatten(1)
        k = rotate(block.k(h).view(-1, p.kv_heads, p.head_dim), cos, sin).flatten(1)
        v = block.v(h)
        pk, pv = padded(k[:n_prompt], prompt_at, b, width, p.kv_heads), padded(v[:n_prompt], prompt_at, b, width, p.kv_heads)
        pq = padded(q[:n_prompt], prompt_at, b, width, p.heads)
        outs = [packed(F.scaled_dot_product_attention(pq, repeat_kv(pk, p.group_heads), repeat_kv(pv, p.group_heads),
                                                      attn_mask=prompt_allowed, scale=p.scaling), prompt_at)]
        if span:
            fk = torch.cat((pk.repeat_interleave(g, 0), padded(k[n_prompt:], fed_at, n, span, p.kv_heads)), dim=2)
            fv = torch.cat((pv.repeat_interleave(g, 0), padded(v[n_prompt:], fed_at, n, span, p.kv_heads)), dim=2)
            fq = padded(q[n_prompt:], fed_at, n, span, p.heads)
            outs.append(packed(F.scaled_dot_product_attention(fq, repeat_kv(fk, p.group_heads),
                                                              repeat_kv(fv, p.group_heads),
                                                              attn_mask=fed_allowed, scale=p.scaling), fed_at))
        x = x + block.o(torch.cat(outs))
        x = x + mlp(block, rms_norm(x, block.post_norm, p.eps))
    # Token 0 of row r is predicted by the last prompt position of its group; token c >= 1 by fed column c - 1.
    last_prompt = prompt_mask.flatten().cumsum(0).view(b, width)[:, -1] - 1  # packed index of each prompt's last token
    fed_index = torch.full((n * span,), -1, dtype=torch.long, device=ids.device)
    fed_index[fed_at] = torch.arange(len(fed_at), device=ids.device) + n_prompt
    source = torch.where(cols == 0, last_prompt[rows // g],
                         fed_index[(rows * span + cols - 1).clamp(min=0)] if span else last_prompt[rows // g])
    return rms_norm(x.index_select(0, source), p.norm, p.eps), rows * t_max + cols
