"""The embedded default model: a ~1M-parameter Llama built from a config, offline.

`build_embedded(seed)` returns a freshly initialised `LlamaForCausalLM` and its tokenizer
(characters, plus the synthetic task's words as whole tokens). `save_pretrained_pair` /
`load_pretrained_pair` go through the standard `AutoTokenizer`/`AutoModelForCausalLM` path, so
the embedded model is loaded exactly as a hub model would be. The config says `llama` on purpose: a folder whose config says `qwen2` makes
transformers substitute Qwen2's own tokenizer class and silently change the ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rlbench.models.tokenizer import CHARACTERS, SPECIAL_TOKENS, TAGS, build_tokenizer
from rlbench.tasks.synthetic import vocabulary

if TYPE_CHECKING:  # transformers is imported where it is used: a cached run's parent process never needs it
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

EMBEDDED_NAME = "embedded"
ARCHITECTURE: dict[str, Any] = dict(
    hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
    max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=10000.0, initializer_range=0.08,
    tie_word_embeddings=True,
)


def embedded_spec(seed: int) -> dict[str, Any]:
    """Everything that determines the freshly initialised embedded model and its tokenizer (the
    key of its cache entry), computed without building either."""
    return {"embedded": 2, "seed": seed, "architecture": ARCHITECTURE,
            "symbols": [*SPECIAL_TOKENS, *TAGS, CHARACTERS], "words": vocabulary()}


def embedded_config(vocab_size: int, pad_id: int, bos_id: int, eos_id: int) -> LlamaConfig:
    """4 layers, width 128, 4 heads, tied embeddings: 0.90M parameters with the 398-token vocabulary.

    Initialised with std 0.08 (about 1/sqrt(width)) rather than transformers' 0.02: at width 128
    the smaller scale leaves attention nearly uniform for hundreds of steps, and the model takes
    far longer to start copying numbers from the question (measured: SFT loss 0.98 vs 0.55 after
    200 steps of batch 32).
    """
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id,
                       **ARCHITECTURE)


def build_embedded(seed: int = 0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """A freshly initialised embedded model (deterministic for a seed) and its tokenizer."""
    from transformers import LlamaForCausalLM

    tokenizer = build_tokenizer(vocabulary())
    config = embedded_config(len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def save_pretrained_pair(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def load_pretrained_pair(path: str | Path, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
    """Load a causal LM and its tokenizer from a local directory through the Auto classes (a shape
    model's tokenizer as saved: `load_saved_tokenizer`).

    `trust_remote_code` is always passed: left unset, transformers asks on the terminal whether to
    run a model directory's own Python code, and a `y` piped to rlbench would run it."""
    from transformers import AutoModelForCausalLM

    from rlbench.models.tokenizer import load_saved_tokenizer

    tokenizer = load_saved_tokenizer(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    return model, tokenizer
