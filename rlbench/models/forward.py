"""Forward passes shared by every role: per-token log-probs of completions, entropies, values."""

from __future__ import annotations

import torch

from rlbench.rollout.hf import position_ids_from_mask


def completion_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      prompt_width: int) -> torch.Tensor:
    """Logits that predict each completion token: [N, T, V] (positions P-1 .. P+T-2)."""
    positions = position_ids_from_mask(attention_mask)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits
    return logits[:, prompt_width - 1: -1]


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature) at `tokens`, without materialising the full log-softmax."""
    logits = logits.float() / temperature
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def completion_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        prompt_width: int, completion_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probs [N, T] of the completion tokens under `model` (same scaling as sampling)."""
    logits = completion_logits(model, input_ids, attention_mask, prompt_width)
    return gather_logprobs(logits, completion_ids, temperature)
