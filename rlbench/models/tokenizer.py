"""A character-level tokenizer for the embedded default model, built locally (no hub).

Vocabulary: pad/bos/eos/unk, the four format tags as single tokens, newline and printable ASCII
(104 tokens). It is a `tokenizers` BPE with no merges and no pre-tokenizer, which splits text into
characters, wrapped in `PreTrainedTokenizerFast` so it saves and reloads through `AutoTokenizer`
with identical ids. The tags are ordinary added tokens (not special), so decoding with
`skip_special_tokens=True` drops padding and EOS but keeps the tags the rewards look for.
"""

from __future__ import annotations

import string

from tokenizers import AddedToken, Tokenizer, decoders, models, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
TAGS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")
CHARACTERS = "\n" + "".join(c for c in string.printable if 32 <= ord(c) <= 126)


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """The embedded model's tokenizer: one id per character, tag or special token."""
    symbols = [*SPECIAL_TOKENS, *TAGS, *CHARACTERS]
    vocab = {s: i for i, s in enumerate(symbols)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK, fuse_unk=False))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAGS])
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
