"""bitsandbytes' 8-bit optimizers under LPWDTrainer: embeddings keep 32-bit state, as with the stock Trainer.

The stock ``create_optimizer`` registers ``optim_bits=32`` for every ``nn.Embedding`` with bitsandbytes'
process-global ``GlobalOptimManager``; LPWD's must do the same, or the embeddings get uint8 Adam state and
``wd`` mode is not the stock Trainer.  Because that manager outlives any one Trainer, each trainer kind runs
in a fresh process, the LPWD one first (tests/scripts/train_bnb_8bit.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tiny import ROOT, offline_env

pytest.importorskip("bitsandbytes", reason="bitsandbytes is in the dev extra: pip install -e '.[dev]'")

SCRIPT = str(ROOT / "tests" / "scripts" / "train_bnb_8bit.py")
# Every 8-bit --optim of transformers 5.24 (paged ones run unpaged on CPU). rmsprop_bnb_8bit applies λ as L2
# in the stock Trainer, LPWD's wd is decoupled: its weights differ by design (tests/test_optim_table.py).
OPTIMS_8BIT = ("adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit", "ademamix_8bit", "paged_ademamix_8bit",
               "lion_8bit", "paged_lion_8bit", "rmsprop_bnb_8bit")
DECOUPLED_IN_STOCK = tuple(o for o in OPTIMS_8BIT if "rmsprop" not in o)
pytestmark = pytest.mark.slow  # two fresh processes, ~20 s


def run_fresh(tmp_path: Path, kind: str) -> dict:
    out = tmp_path / kind / "result.pt"
    out.parent.mkdir(parents=True)
    env = offline_env()
    subprocess.run([sys.executable, SCRIPT, str(out), "--trainer", kind, "--optims", ",".join(OPTIMS_8BIT)],
                   check=True, env=env, timeout=600, capture_output=True)
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("bnb")
    lpwd = run_fresh(root, "lpwd")  # first, in a process where no stock Trainer ever registered anything
    return {"lpwd": lpwd, "stock": run_fresh(root, "stock")}


@pytest.mark.parametrize("optim", OPTIMS_8BIT)
def test_embeddings_get_32_bit_state_and_the_rest_8_bit(runs: dict, optim: str) -> None:
    for kind in ("stock", "lpwd"):
        dtypes = runs[kind][optim]["state1_dtype"]
        assert dtypes["model.embed_tokens.weight"] == "float32", (kind, dtypes)
        assert dtypes["lm_head.weight"] == "uint8", (kind, dtypes)  # same size, not an Embedding: 8-bit


@pytest.mark.parametrize("optim", DECOUPLED_IN_STOCK)
def test_wd_mode_is_bitwise_the_stock_trainer(runs: dict, optim: str) -> None:
    stock, ours = runs["stock"][optim]["params"], runs["lpwd"][optim]["params"]
    assert stock.keys() == ours.keys()
    for name in stock:
        assert torch.equal(ours[name], stock[name]), name
