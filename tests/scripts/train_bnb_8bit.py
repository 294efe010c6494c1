"""Train a tiny Llama with bitsandbytes' 8-bit optimizers, in a process of its own; one trainer kind per
process.

    python train_bnb_8bit.py OUT.pt --trainer lpwd|stock --optims adamw_8bit,lion_8bit,...

bitsandbytes keeps its optimizer overrides (``GlobalOptimManager``) for the whole process, keyed by parameter
and module: a stock Trainer run in the same process would register the 32-bit override that an LPWD run failed
to register, and hide the difference.  So each kind trains in a fresh process (the test starts the LPWD one
first).  The Llama's vocabulary is 256 × hidden 16 = 4096 elements, bitsandbytes' ``min_8bit_size``: below it
every tensor gets 32-bit state anyway.  ``lm_head`` (a Linear of the same size) shows that 8-bit state is
really in use.

Writes ``{optim: {"params": {name: tensor}, "state1_dtype": {name: dtype name}}}`` to OUT.pt.
"""

from __future__ import annotations

import argparse
import os

import torch
from transformers import Trainer, TrainingArguments, set_seed

from hf_lpwd import LPWDTrainer, LPWDTrainingArguments
from tests.tiny import (
    TokenDataset,
    tiny_llama,
)

VOCAB = 256


def train(kind: str, optim: str, out_dir: str) -> dict:
    kwargs = dict(output_dir=out_dir, optim=optim, max_steps=5, per_device_train_batch_size=4,
                  learning_rate=1e-3, weight_decay=0.1, lr_scheduler_type="constant", report_to="none",
                  use_cpu=True, disable_tqdm=True, save_strategy="no", dataloader_num_workers=0, seed=0)
    if kind == "lpwd":
        trainer_cls, args = LPWDTrainer, LPWDTrainingArguments(**kwargs, weight_decay_mode="wd")
    else:
        trainer_cls, args = Trainer, TrainingArguments(**kwargs)
    set_seed(0)
    model = tiny_llama(vocab=VOCAB)
    trainer = trainer_cls(model=model, args=args, train_dataset=TokenDataset(20, vocab=VOCAB, causal_lm=True))
    trainer.train()
    state = trainer.optimizer.state
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "state1_dtype": {n: str(state[p]["state1"].dtype).removeprefix("torch.")
                         for n, p in model.named_parameters() if "state1" in state[p]},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--trainer", choices=["lpwd", "stock"], required=True)
    parser.add_argument("--optims", required=True)
    cli = parser.parse_args()
    results = {optim: train(cli.trainer, optim, os.path.join(os.path.dirname(cli.out), optim))
               for optim in cli.optims.split(",")}
    torch.save(results, cli.out)


if __name__ == "__main__":
    main()
