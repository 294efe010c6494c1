"""The tiny models the tests build from configs (no downloads): one builder per family, for every test file.

Sizes are arguments rather than copies: a test that counts parameters by hand names the sizes it counts.
"""

from __future__ import annotations

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
)


def tiny_bert(layers: int = 2, vocab: int = 64, num_labels: int = 2) -> BertForSequenceClassification:
    """BERT classifier: hidden 16, 2 heads, FFN 32, 32 positions."""
    return BertForSequenceClassification(
        BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                   intermediate_size=32, max_position_embeddings=32, num_labels=num_labels)
    )


def tiny_llama_config(layers: int = 2, vocab: int = 64, heads: int = 2, kv_heads: int = 1,
                      tied: bool = False) -> LlamaConfig:
    """Llama: hidden 16, FFN 32, 32 positions; ``tied`` ties the embedding and the head."""
    return LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=32,
                       tie_word_embeddings=tied)


def tiny_llama(layers: int = 2, vocab: int = 64, heads: int = 2, kv_heads: int = 1, tied: bool = False,
               seed: int | None = None) -> LlamaForCausalLM:
    if seed is not None:
        torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(layers, vocab, heads, kv_heads, tied))
