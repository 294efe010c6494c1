"""``LPWDTrainer.hyperparameter_search(backend="ray")`` over (mode, λ); each trial records what it built.

Usage: ``python tests/scripts/hp_search_ray.py OUT_DIR RECORD.jsonl`` (run by tests/test_hp_search.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import ray
from ray import tune

from hf_lpwd import LPWDTrainingArguments
from tests.test_hp_search import LAYERS, FileRecordingTrainer
from tests.tiny import TokenDataset, common_args, tiny_bert


def main(out: Path, record: str) -> None:
    args = LPWDTrainingArguments(**common_args(out, learning_rate=0.05, max_steps=6, eval_strategy="no"))
    trainer = FileRecordingTrainer(model_init=lambda: tiny_bert(layers=LAYERS), args=args,
                                   train_dataset=TokenDataset(24), eval_dataset=TokenDataset(16, seed=1))
    trainer.record_file = record
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}})
    try:
        trainer.hyperparameter_search(
            # two trials that differ in both (each Ray trial costs a worker's imports, ~20 s on a shared core)
            hp_space=lambda _: {"weight_decay_mode": tune.grid_search(["wd", "lpwd"]),
                                "weight_decay": tune.sample_from(
                                    lambda spec: 0.05 if spec.config.weight_decay_mode == "wd" else 0.3)},
            backend="ray", n_trials=1, direction="minimize", resources_per_trial={"cpu": 1},
            storage_path=str(out / "ray"))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
