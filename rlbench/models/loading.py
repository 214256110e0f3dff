"""Resolving `model.name` to weights on disk: the embedded default, a local directory or a hub name."""

from __future__ import annotations

from pathlib import Path

import torch

from rlbench.cache import cached_dir, stable_hash
from rlbench.models.embedded import EMBEDDED_NAME, build_embedded, save_pretrained_pair

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def embedded_base_dir(seed: int = 0) -> Path:
    """The freshly initialised embedded model, saved once in the cache in Hugging Face format."""

    def build(tmp: Path) -> None:
        model, tokenizer = build_embedded(seed)
        save_pretrained_pair(model, tokenizer, tmp)

    key = stable_hash({"embedded": True, "seed": seed, "config": build_embedded(seed)[0].config.to_dict()})
    return cached_dir("base", key, build)[0]


def resolve_base(name: str) -> Path:
    """A directory holding the base model for `model.name`."""
    if name == EMBEDDED_NAME:
        return embedded_base_dir()
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name))
