"""The embedded default model's tokenizer, built locally (no hub): characters plus whole words.

Vocabulary: pad/bos/eos/unk, the four format tags, newline and printable ASCII (104 tokens), then
whole words given by the caller (the synthetic task's words), each as itself and with a leading
space (" has"). It is a `tokenizers` BPE with no merges and no pre-tokenizer, which splits text
into characters, wrapped in `PreTrainedTokenizerFast` so it saves and reloads through
`AutoTokenizer` with identical ids. Tags and words are ordinary added tokens (not special),
matched leftmost-longest before the character split, so any text still encodes and decodes back
exactly, and digits are always single characters (arithmetic stays digit by digit). Decoding with
`skip_special_tokens=True` drops padding and EOS but keeps the tags the rewards look for.

A shape model (`rlbench.models.shape`) needs a real model's vocabulary size: `vocab_size` pads
the BPE vocabulary with filler tokens (`<fill_123>`) placed before the words, so the ids run
0 .. vocab_size-1 with no gap. With no merges, encoding never produces a filler: text tokenizes
exactly as without them, and only a random model's samples decode to fillers.

Loading: `load_saved_tokenizer(path)` is `AutoTokenizer.from_pretrained`, except in a shape model's
directory (marked by `shape.json`): for a config that says `qwen2`, transformers 5 replaces any
saved tokenizer with Qwen2's own byte-level pipeline, which would change the ids, so there the
saved tokenizer.json is loaded as it is, by the class it was saved with.

Why words: a synthetic question is about 87 characters but 28 tokens with words, so SFT and the
prompt half of every RL forward cost about a third as much; completions (digits, operators and
tags) are unchanged.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
TAGS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")
CHARACTERS = "\n" + "".join(c for c in string.printable if 32 <= ord(c) <= 126)


FILLER = "<fill_{}>"


def build_tokenizer(words: Iterable[str] = (), vocab_size: int | None = None) -> PreTrainedTokenizerFast:
    """One id per character, tag, special token and word (with and without a leading space);
    `vocab_size`, when given, pads with unreachable filler tokens to exactly that many ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    symbols = [*SPECIAL_TOKENS, *TAGS, *CHARACTERS]
    word_tokens = sorted({form for w in words for form in (w, " " + w) if len(form) > 1})
    vocab = {s: i for i, s in enumerate(symbols)}
    if vocab_size is not None:
        fillers = vocab_size - len(vocab) - len(word_tokens)
        if fillers < 0:
            raise ValueError(f"vocab_size {vocab_size} is smaller than the {len(vocab) + len(word_tokens)} "
                             "tokens the synthetic tokenizer needs")
        vocab.update((FILLER.format(i), len(vocab) + i) for i in range(fillers))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK, fuse_unk=False))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in (*TAGS, *word_tokens)])
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )


SHAPE_MARKER = "shape.json"  # written into a shape model's directory (rlbench.models.shape)


def load_saved_tokenizer(path: str | Path, **kwargs: Any):
    """The tokenizer saved in `path`: `AutoTokenizer`, or for a shape model the saved tokenizer.json
    exactly (transformers would otherwise swap in the config's model type's own tokenizer)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if (Path(path) / SHAPE_MARKER).exists():
        return PreTrainedTokenizerFast.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path, **kwargs)
