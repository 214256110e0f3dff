"""Tolerances for two float computations of the same value whose sums run in different orders.

Chunks, micro-batches, a shared prompt, another thread count or another CPU's kernels (MKL and
oneDNN block a matrix product by ISA and by shape) add the same terms in another order, so the
results differ in their last bits, by an amount that depends on the machine. A tolerance tuned on
one CPU fails on another; these are derived from the computation instead:

- A sum of k terms t_i computed in floating point, in any order, is within gamma_k * sum |t_i| of
  the exact sum, gamma_k = k u / (1 - k u) ~ k u, u the unit roundoff (2^-24 for float32, 2^-8 for
  bfloat16); a dot product of length k likewise (Higham, Accuracy and Stability of Numerical
  Algorithms, 2nd ed., secs. 3.1 and 4.2). Two orders therefore differ by at most 2 k u sum |t_i|.
- A chain of sums (a matrix product feeding another) adds the k of each stage it reorders; a
  stage both computations run alike adds nothing. `llama_chain_terms` counts a decoder stack's.
- sum |t_i| cannot be observed element by element; the largest |value| of the compared tensor
  (`scale`) stands in for it. Terms that cancel make sum |t_i| larger than that, but rounding errors
  of either sign grow like sqrt(k) u rather than the bound's k u (Higham, on the statistical
  distribution of rounding errors), which leaves a factor sqrt(k) (20 to 100 here) for cancellation.

What these tolerances still catch: a wrong chunk boundary, a token counted twice or dropped, a
mis-scaled micro-batch, each an error of order 1/tokens or more of the value itself, against
2 k u ~ 1e-4 to 1e-3 of the tensor's scale for float32.
"""

from __future__ import annotations

import torch


def unit_roundoff(dtype: torch.dtype) -> float:
    """u: half the gap between 1 and the next float of `dtype` (2^-24 for float32)."""
    return torch.finfo(dtype).eps / 2


def reorder_atol(terms: int, scale: float, dtype: torch.dtype = torch.float32) -> float:
    """2 k u scale: the largest difference between two orders of a `terms`-term sum of magnitude `scale`."""
    return 2 * terms * unit_roundoff(dtype) * scale


def llama_chain_terms(config, sequence: int, tokens: int = 0, layers: int | None = None,
                      backward: bool = True) -> int:
    """k of a Llama decoder stack whose every product may be reordered: per layer, the sums a value
    passes through from the layer's input to its output (two RMSNorms and the q/k/v input and
    attention output projections over the hidden size, the attention scores over the head
    dimension, the softmax normaliser and the weighted values over the `sequence`, the MLP's input
    projections over the hidden size and its output projection over the intermediate size), then
    the LM head's vocabulary; doubled with `backward` (the gradient takes the transposed products
    back); plus the `tokens` every weight gradient sums over. `layers` limits it to the last few."""
    hidden, inner = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    per_layer = 2 * hidden + hidden + head_dim + 2 * sequence + hidden + hidden + inner
    layers = config.num_hidden_layers if layers is None else layers
    return (2 if backward else 1) * (layers * per_layer + config.vocab_size) + tokens


def assert_reordered_close(actual: torch.Tensor, expected: torch.Tensor, terms: int, scale: float | None = None,
                           msg: str = "") -> None:
    """`actual` equals `expected` to within `reorder_atol(terms, scale)` in every element; `scale`
    defaults to the largest |expected| (see the module docstring). The dtype is `expected`'s."""
    scale = float(expected.detach().abs().max()) if scale is None else scale
    atol = reorder_atol(terms, scale, expected.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0,
                               msg=lambda m: f"{msg}: {m} (tolerance 2 k u scale, k = {terms}, scale {scale:.3g})")
