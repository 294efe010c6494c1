"""Shared test helpers (no downloads): tiny models built from configs, tiny datasets, Trainer arguments, the
offline environment of subprocesses and the repository root.  Import them from here (``from tests.tiny import
...``), never from ``conftest``.  Sizes are arguments rather than copies: a test that counts parameters by
hand names the sizes it counts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
)

ROOT = Path(__file__).resolve().parent.parent
"""The repository root."""


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


class TokenDataset(Dataset):
    """Random token sequences with a learnable label (parity of the first token)."""

    def __init__(self, size: int, vocab: int = 64, length: int = 12, seed: int = 0, causal_lm: bool = False,
                 seq2seq: bool = False) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(3, vocab, (size, length), generator=gen)
        self.causal_lm, self.seq2seq = causal_lm, seq2seq

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.ids[i]
        item = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if self.causal_lm:
            item["labels"] = ids.clone()
        elif self.seq2seq:
            item["labels"] = ids.flip(0)[:6].clone()
        else:
            item["labels"] = ids[0] % 2
        return item


def offline_env(**extra: str) -> dict[str, str]:
    """The environment of a test's subprocess: this checkout importable, no Hub, one thread per process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    env.update(extra)
    return env


def common_args(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of a tiny CPU ``TrainingArguments`` run: 4 steps, batch 4, no saving, no reports."""
    args: dict[str, Any] = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=5e-3, max_steps=4,
        report_to="none", use_cpu=True, disable_tqdm=True, seed=0, save_strategy="no", logging_steps=2,
        dataloader_num_workers=0,
    )
    args.update(overrides)
    return args

