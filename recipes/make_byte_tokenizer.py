"""Build a byte-level tokenizer (256 byte tokens + ``<|endoftext|>``, no merges) for from-scratch LMs.

It needs no training and no download, so a tiny Llama can be pretrained offline on any text:

    python recipes/make_byte_tokenizer.py recipes/data/byte_tokenizer

The shipped ``recipes/data/byte_tokenizer`` was written by this script; ``tiny_llama_shakespeare.yaml``
uses it.  Vocabulary size: 257.
"""

from __future__ import annotations

import sys

EOS = "<|endoftext|>"


def build_byte_tokenizer() -> object:
    """A ``PreTrainedTokenizerFast``: each UTF-8 byte is one token (GPT-2's byte-to-character map)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {EOS: 0, **{char: i + 1 for i, char in enumerate(alphabet)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=EOS,
        model_max_length=1 << 20,
    )


def save_byte_tokenizer(path: str) -> object:
    tokenizer = build_byte_tokenizer()
    tokenizer.save_pretrained(path)
    return tokenizer


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python {sys.argv[0]} OUTPUT_FOLDER")
    tokenizer = save_byte_tokenizer(sys.argv[1])
    print(f"saved a byte-level tokenizer ({len(tokenizer)} tokens) to {sys.argv[1]}")
