"""The embedded model's tokenizer: whole words for the synthetic task, exact round trips, digits
one by one, and the same ids after a save and reload through the Auto classes."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlbench.catalog import load_problems
from rlbench.config import TaskConfig
from rlbench.models.embedded import build_embedded, save_pretrained_pair
from rlbench.models.tokenizer import TAGS, build_tokenizer
from rlbench.tasks import demonstration, prompt_text
from rlbench.tasks.synthetic import vocabulary

TASK = TaskConfig(name="synthetic", min_steps=1, max_steps=3, max_number=50)


def test_vocabulary_holds_the_template_names_and_nouns_but_no_field_names() -> None:
    words = vocabulary()
    assert words == sorted(set(words))
    for word in ("Mia", "She", "times", "members", "dollars", "barrel", "packs", "Shipping"):
        assert word in words
    for field in ("name", "things", "container", "unit", "liquid", "item", "group", "P", "p", "b"):
        assert field not in words, field  # template slots, not text


def test_a_question_is_words_and_single_characters() -> None:
    tokenizer = build_tokenizer(["She", "has", "then", "times", "as", "much"])
    ids = tokenizer("Q: She has 12 apples.\n")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "<bos>", "Q", ":", " She", " has", " ", "1", "2", " ", "a", "p", "p", "l", "e", "s", ".", "\n"]
    # A word inside a longer one is split but still round-trips.
    text = " thenx hash"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_every_question_and_demonstration_round_trips_and_is_much_shorter_than_its_text() -> None:
    _, tokenizer = build_embedded(0)
    problems = load_problems(TASK, "train", 300, seed=0)
    n_chars = n_tokens = 0
    for p in problems:
        for text in (prompt_text(p), demonstration(p)):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert tokenizer.decode(ids, skip_special_tokens=True) == text
        ids = tokenizer(prompt_text(p), add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        n_chars, n_tokens = n_chars + len(prompt_text(p)), n_tokens + len(ids)
    assert n_tokens < 0.45 * n_chars  # measured: 28 tokens for 87 characters on average
    tag_ids = tokenizer(list(TAGS), add_special_tokens=False)["input_ids"]
    assert all(len(ids) == 1 for ids in tag_ids)
    digits = tokenizer("1234567890", add_special_tokens=False)["input_ids"]
    assert len(digits) == 10


def test_save_and_reload_through_the_auto_classes_keeps_ids_and_weights(tmp_path) -> None:
    model, tokenizer = build_embedded(0)
    save_pretrained_pair(model, tokenizer, tmp_path)
    tokenizer2 = AutoTokenizer.from_pretrained(tmp_path)
    model2 = AutoModelForCausalLM.from_pretrained(tmp_path)
    problems = load_problems(TASK, "eval", 20, seed=0)
    texts = [prompt_text(p) + demonstration(p) for p in problems]
    assert tokenizer(texts)["input_ids"] == tokenizer2(texts)["input_ids"]
    assert len(tokenizer2) == len(tokenizer) == model2.config.vocab_size
    for (name, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
