"""Train a tiny BERT classifier with LPWDTrainer; used by tests as a real subprocess.

    python train_tiny_bert.py OUTPUT_DIR [--kill-after-save] [--resume CHECKPOINT] [--max-steps N]
                              [--decay-target zero|init] [--spd]

``--kill-after-save`` SIGKILLs this very process right after the first checkpoint is written: the
hardest way a run can stop (no cleanup, no atexit).  The checkpoint (step 3) falls in the middle of
the 5-step warm-up, where pwd's folded decay changes at every step.  The final parameters go to
OUTPUT_DIR/final.pt, and the number of correction passes pwd needed to OUTPUT_DIR/fold.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal

import torch
from transformers import BertConfig, BertForSequenceClassification, TrainerCallback, set_seed

from hf_lpwd import LPWDTrainer, LPWDTrainingArguments
from tests.tiny import TokenDataset


class KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--kill-after-save", action="store_true")
    parser.add_argument("--resume", default=None)
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--decay-target", default=None, help="--lpwd_decay_target (from 0.4.0)")
    parser.add_argument("--spd", action="store_true", help="rwd with --lpwd_spd, λ = 0.5 (from 0.5.0)")
    cli = parser.parse_args()

    set_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=2)
    model = BertForSequenceClassification(config)
    args = LPWDTrainingArguments(
        output_dir=cli.output_dir, weight_decay_mode="rwd" if cli.spd else "lpwd", weight_decay=0.5,
        learning_rate=3e-3,
        per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=cli.max_steps,
        lr_scheduler_type="cosine", warmup_steps=5, save_strategy="steps", save_steps=3,
        logging_steps=2, eval_strategy="steps", eval_steps=3, report_to="none", use_cpu=True,
        disable_tqdm=True, seed=0, data_seed=0, dataloader_num_workers=0,
        **({} if cli.decay_target is None else {"lpwd_decay_target": cli.decay_target}),
        **({"lpwd_spd": True} if cli.spd else {}),
    )
    trainer = LPWDTrainer(
        model=model, args=args, train_dataset=TokenDataset(30, vocab=64, length=12, seed=1),
        eval_dataset=TokenDataset(8, vocab=64, length=12, seed=2),
        callbacks=[KillAfterSave()] if cli.kill_after_save else None,
    )
    trainer.train(resume_from_checkpoint=cli.resume)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
               os.path.join(cli.output_dir, "final.pt"))
    with open(os.path.join(cli.output_dir, "fold.json"), "w", encoding="utf-8") as f:
        json.dump({"fold_corrections": trainer.lpwd_optimizer.fold_corrections}, f)


if __name__ == "__main__":
    main()
