"""Scalar-head models for the reward and value roles: a transformer backbone plus a linear head.

The reward model reads its score at the last real token of a sequence; the value model reads a
value at every position that predicts a completion token (the state before that token).
Initialised from a causal LM directory (the SFT policy) with a fresh, zero head, or loaded from a
directory saved by `save`. `ScalarRole` is what the training loop reads of either role.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from transformers import AutoModel

from rlbench.models.batching import position_ids_from_mask
from rlbench.models.forward import scatter_rows
from rlbench.models.lean_llama import llama_parts, packed_completion_hidden

HEAD_FILE = "scalar_head.pt"


class ScalarRole(Protocol):
    """What the loop reads of the reward and value roles (a `ScalarHeadModel`, sharded or not)."""

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[N] one scalar per sequence, read at its last real token (the reward)."""
        ...

    def completion_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          prompt_width: int) -> torch.Tensor:
        """[N, T] the value of the state before each completion token."""
        ...


class ScalarHeadModel(nn.Module):
    def __init__(self, backbone: nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> ScalarHeadModel:
        """A backbone from a causal LM or scalar-head directory; the head is loaded if saved there."""
        path = Path(path)
        backbone = AutoModel.from_pretrained(path, dtype=dtype)
        model = cls(backbone, backbone.config.hidden_size).to(dtype)
        if (path / HEAD_FILE).exists():
            model.head.load_state_dict(torch.load(path / HEAD_FILE, weights_only=True))
        return model

    def save(self, path: str | Path, meta: dict | None = None) -> None:
        path = Path(path)
        self.backbone.save_pretrained(path)
        torch.save(self.head.state_dict(), path / HEAD_FILE)
        (path / "scalar_head.json").write_text(json.dumps(meta or {}, indent=2))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[N, L] one scalar per position."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids_from_mask(attention_mask)).last_hidden_state
        return self.head(hidden).squeeze(-1).float()

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[N] the scalar at each row's last real token (sequence reward)."""
        scalars = self(input_ids, attention_mask)
        last = attention_mask.shape[1] - 1 - attention_mask.flip(-1).argmax(-1)
        return scalars.gather(1, last[:, None]).squeeze(-1)

    def completion_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int) -> torch.Tensor:
        """[N, T] value of the state before each completion token (0 where the completion's mask
        is 0 on the lean path). Llama-architecture backbones run the packed forward of
        `rlbench.models.lean_llama` (real tokens only), others the module's own."""
        parts = llama_parts(self.backbone) if input_ids.shape[1] > prompt_width else None
        if parts is None:
            return self(input_ids, attention_mask)[:, prompt_width - 1: -1]
        hidden, index = packed_completion_hidden(parts, input_ids, attention_mask,
                                                 position_ids_from_mask(attention_mask), prompt_width)
        values = self.head(hidden).squeeze(-1).float()
        return scatter_rows(values, index, (input_ids.shape[0], input_ids.shape[1] - prompt_width))
