"""Shape models: a real architecture's exact config with random weights, built locally (no download).

Memory and speed do not depend on weight values, so a model with Qwen2.5-0.5B's config and random
weights holds, computes and generates exactly as the real one would, on the same tokens:

    model.name: shape:qwen2.5-0.5b          # a config shipped in rlbench/models/shapes/
    model.name: shape:path/to/config.json   # any local config.json (trust_remote_code is never used)

The model is built once from the config (seeded, in the config's `torch_dtype`, as hub checkpoints
are stored) with a synthetic tokenizer of the same vocabulary size (the embedded tokenizer padded
with unreachable fillers, `rlbench.models.tokenizer`), and saved in the cache in Hugging Face format;
every role then loads it through `AutoModelForCausalLM` as it would a hub model, and the tokenizer
through `load_saved_tokenizer` (the saved tokenizer.json as it is: see rlbench.models.tokenizer).
Token ids (pad, bos, eos) are the synthetic tokenizer's; every other field is the config's own.

What follows from random weights: EOS is one token in ~150,000, so every completion runs to
`max_new_tokens` (the worst case, which is what a memory measurement wants); SFT and accuracy are
meaningless and skipped; the reward and value models are the same shape with a fresh scalar head.

The config is read and checked without torch by `rlbench.config.model_source.shape_config` (so a
suite is checked before anything loads); this module builds and caches the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlbench.cache import cached_dir, stable_hash
from rlbench.config.model_source import SHAPE_PREFIX, SHAPES_DIR, is_shape, known_shapes, shape_config
from rlbench.errors import UserError
from rlbench.models.tokenizer import SHAPE_MARKER

SHAPE_VERSION = 1
# Set from the synthetic tokenizer, never from the file: the ids must be the tokenizer's.
TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")
MEANINGLESS_ACCURACY = ("shape model (random weights): accuracy is not measured; every completion runs to "
                        "max_new_tokens, the worst case for memory and time")


def shape_spec(name: str, seed: int = 0) -> dict[str, Any]:
    """Everything that determines the built model and tokenizer: the key of its cache entry."""
    from rlbench.tasks.synthetic import vocabulary

    return {"shape": SHAPE_VERSION, "config": shape_config(name), "seed": seed, "words": vocabulary()}


def transformers_config(config: dict[str, Any], token_ids: dict[str, int] | None = None):
    """The transformers config object of a shape's config dict, with the given token ids."""
    from transformers import AutoConfig

    fields = {k: v for k, v in config.items()
              if not k.startswith("_") and k not in ("model_type", "torch_dtype", "dtype", "auto_map", *TOKEN_FIELDS)}
    try:
        return AutoConfig.for_model(config["model_type"], **fields, **(token_ids or {}))
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"model.name: model_type '{config['model_type']}' is not one transformers knows ({exc})") from None


def build_shape(config: dict[str, Any], seed: int = 0):
    """(model, tokenizer): a causal LM of `config`'s architecture with seeded random weights, in the
    config's dtype, and the synthetic tokenizer with exactly `config['vocab_size']` ids."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlbench.models.precision import DTYPES
    from rlbench.models.tokenizer import build_tokenizer
    from rlbench.tasks.synthetic import vocabulary

    try:
        tokenizer = build_tokenizer(vocabulary(), config["vocab_size"])
    except ValueError as exc:
        raise UserError(f"model.name: {exc}") from None
    ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id}
    hf_config = transformers_config(config, ids)
    dtype = DTYPES.get(config.get("torch_dtype") or config.get("dtype") or "float32", torch.float32)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    for key, value in ids.items():
        setattr(model.generation_config, key, value)
    return model, tokenizer


def shape_base_dir(name: str, seed: int = 0) -> Path:
    """The shape model, built once and saved in the cache in Hugging Face format."""
    from rlbench.models.embedded import save_pretrained_pair

    spec = shape_spec(name, seed)

    def build(tmp: Path) -> None:
        model, tokenizer = build_shape(spec["config"], seed)
        save_pretrained_pair(model, tokenizer, tmp)
        (tmp / SHAPE_MARKER).write_text(json.dumps({"name": name, "seed": seed}, indent=2))

    return cached_dir("base", stable_hash(spec), build)[0]


__all__ = ["SHAPE_PREFIX", "SHAPES_DIR", "build_shape", "is_shape", "known_shapes", "shape_base_dir",
           "shape_config", "shape_spec", "transformers_config"]
