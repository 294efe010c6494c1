"""Tiny deterministic datasets for tests (no downloads)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


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
