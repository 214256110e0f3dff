"""Shape models: a real architecture's config with random weights and a synthetic tokenizer of the
same vocabulary, built locally and loaded back through the Auto classes."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlbench.errors import UserError
from rlbench.models.embedded import build_embedded
from rlbench.models.lean_llama import llama_parts
from rlbench.models.loading import resolve_base
from rlbench.models.shape import known_shapes, shape_config, transformers_config
from rlbench.models.tokenizer import load_saved_tokenizer

# Published parameter counts of the real models (Qwen2.5 model cards, Llama 3.1's 8,030,261,248).
PUBLISHED = {
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-7b": 7_615_616_512,
    "llama-3.1-8b": 8_030_261_248,
}
QWEN_VOCAB = 151_936


def tiny_qwen_config(tmp_path, **overrides) -> str:
    """Qwen2.5-0.5B's layout shrunk to 2 layers of width 32, keeping its 151,936-token vocabulary."""
    config = dict(shape_config("shape:qwen2.5-0.5b"), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_window_layers=2, **overrides)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return f"shape:{path}"


def test_shipped_shapes_have_the_published_parameter_counts() -> None:
    assert set(known_shapes()) == set(PUBLISHED)
    for name, count in PUBLISHED.items():
        with torch.device("meta"):  # no memory
            model = AutoModelForCausalLM.from_config(transformers_config(shape_config(f"shape:{name}")))
        assert sum(p.numel() for p in model.parameters()) == count, name
        assert type(model).__name__ == ("LlamaForCausalLM" if name.startswith("llama") else "Qwen2ForCausalLM")


def test_a_shape_loads_with_its_vocabulary_and_the_embedded_tokens(tmp_path) -> None:
    name = tiny_qwen_config(tmp_path)
    path = resolve_base(name)
    assert resolve_base(name) == path  # built once, then the cache entry
    tokenizer = load_saved_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.config.vocab_size == len(tokenizer) == QWEN_VOCAB
    assert model.get_input_embeddings().weight.shape == (QWEN_VOCAB, 32)
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied, as Qwen2.5-0.5B
    # The token ids are the tokenizer's, and text encodes exactly as with the embedded tokenizer.
    assert (model.config.pad_token_id, model.config.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)
    _, embedded_tokenizer = build_embedded(0)
    text = "Q: Mia has 12 apples. How many?\n"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == embedded_tokenizer.convert_ids_to_tokens(
        embedded_tokenizer(text)["input_ids"])
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert llama_parts(model) is not None  # the lean forward and decoder apply
    # Random weights stored in the config's dtype (bfloat16, as hub checkpoints are).
    assert json.loads((path / "config.json").read_text())["dtype"] == "bfloat16"
    assert float(model.model.layers[0].mlp.up_proj.weight.detach().std()) == pytest.approx(0.02, rel=0.1)


def test_the_same_shape_and_seed_give_the_same_weights(tmp_path, monkeypatch) -> None:
    name = tiny_qwen_config(tmp_path)
    first = AutoModelForCausalLM.from_pretrained(resolve_base(name))
    monkeypatch.setenv("RLBENCH_CACHE", str(tmp_path / "other-cache"))
    second = AutoModelForCausalLM.from_pretrained(resolve_base(name))
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)


def test_unknown_shape_and_bad_config_are_one_line_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="no shape 'qwen9' .*known: llama-3.1-8b, qwen2.5-0.5b"):
        shape_config("shape:qwen9")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(UserError, match="has no model_type or vocab_size"):
        shape_config(f"shape:{bad}")
    with pytest.raises(UserError, match="smaller than the"):
        resolve_base(tiny_qwen_config(tmp_path, vocab_size=100))
