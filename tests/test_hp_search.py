"""``Trainer.hyperparameter_search``: every trial builds its LPWD from that trial's arguments.

The settings are read when the optimizer is built (not frozen in ``__init__``), so a search over
``weight_decay_mode`` and ``weight_decay`` trains what each trial says.  Failing before 0.4.0: every trial
built the ``__init__``-time settings (``mode=lpwd``, λ = 0) and the objectives were equal.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hf_lpwd import LPWDTrainer, LPWDTrainingArguments
from tests.tiny import ROOT, TokenDataset, common_args, offline_env, tiny_bert

optuna = pytest.importorskip("optuna")

TRIALS = [("wd", 0.05), ("lpwd", 0.3), ("pwd", 0.1)]
LAYERS = 2  # N: depths 0 .. N+1


class RecordingTrainer(LPWDTrainer):
    """Records, per built optimizer, ``(timing, {depth: λ of the decayed group})``."""

    built: list[tuple[str, dict[int | None, float]]] = []

    def create_optimizer(self, model=None):
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if fresh:
            lpwd = self.lpwd_optimizer
            decayed = {g["depth"]: g["weight_decay"] for g in lpwd.param_groups if g["lpwd_multiplier"] > 0}
            RecordingTrainer.built.append((lpwd.mode, decayed))
        return optimizer


class FileRecordingTrainerMixin:
    """Appends ``{"mode", "lambda"}`` of each LPWD it builds to ``self.record_file`` (a search trial's
    process)."""

    record_file: str | None = None

    def create_optimizer(self, model: Any = None) -> Any:
        import json

        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if fresh and self.record_file:
            config = self.lpwd_config
            with open(self.record_file, "a", encoding="utf-8") as f:
                f.write(json.dumps({"mode": config.mode, "lambda": config.weight_decay}) + "\n")
        return optimizer


class FileRecordingTrainer(FileRecordingTrainerMixin, LPWDTrainer):
    """What a Ray worker builds, recorded in a file (the worker's objects never come back)."""


def test_each_trial_builds_the_lpwd_its_arguments_say(tmp_path: Path) -> None:
    RecordingTrainer.built = []
    args = LPWDTrainingArguments(**common_args(tmp_path, learning_rate=0.05, max_steps=6, eval_strategy="no"))

    def hp_space(trial):
        mode, lam = TRIALS[trial.suggest_categorical("trial", list(range(len(TRIALS))))]
        return {"weight_decay_mode": mode, "weight_decay": lam}

    trainer = RecordingTrainer(model_init=lambda: tiny_bert(layers=LAYERS), args=args,
                               train_dataset=TokenDataset(24), eval_dataset=TokenDataset(16, seed=1))
    objectives: list[float] = []

    def objective(metrics: dict[str, float]) -> float:
        objectives.append(metrics["eval_loss"])
        return objectives[-1]

    trainer.hyperparameter_search(hp_space=hp_space, compute_objective=objective, backend="optuna",
                                  n_trials=len(TRIALS), direction="minimize",
                                  sampler=optuna.samplers.GridSampler({"trial": list(range(len(TRIALS)))},
                                                                      seed=0))

    assert len(RecordingTrainer.built) == 3
    by_mode: dict[str, list[dict]] = {}
    for mode, groups in RecordingTrainer.built:
        by_mode.setdefault(mode, []).append(groups)
    (wd_groups,) = by_mode["wd"]
    assert set(wd_groups.values()) == {0.05}  # uniform λ
    pwd_groups, lpwd_groups = sorted(by_mode["pwd"], key=len)  # uniform: one decayed group; layer-wise: N+2
    assert set(pwd_groups.values()) == {0.1}
    levels = LAYERS + 2
    assert lpwd_groups == {d: pytest.approx(0.3 * (d + 1) / levels, rel=1e-12) for d in range(LAYERS + 2)}
    assert len(objectives) == 3 and len(set(objectives)) == 3  # three different trainings


def test_ray_trials_build_their_own_lpwd(tmp_path: Path) -> None:
    """The same with Ray Tune: a local instance, each trial in a worker process (the Trainer pickled to it).

    In a fresh process, as a user runs it: an ``Accelerator`` left by an earlier Trainer in the same process
    holds a weakref that Ray cannot pickle (accelerate's state, not LPWD's).
    """
    pytest.importorskip("ray.tune")
    record = tmp_path / "built.jsonl"
    subprocess.run([sys.executable, str(ROOT / "tests" / "scripts" / "hp_search_ray.py"), str(tmp_path),
                    str(record)], check=True, env=offline_env(), cwd=ROOT, timeout=600)
    built = sorted((row["mode"], row["lambda"]) for row in map(json.loads, record.read_text().splitlines()))
    assert built == [("lpwd", 0.3), ("wd", 0.05)]  # λ: the head's rate


# Trials in this order, one after the other on one Trainer: a setting given in one trial and not in the next,
# and a None (the mode's default / no timescale) after a value.
SPACES = [
    {"weight_decay_mode": "pwd", "lpwd_layerwise": True},
    {"weight_decay_mode": "lpwd", "lpwd_layerwise": None},
    {"weight_decay_mode": "wd", "weight_decay": 0.1, "lpwd_cautious": True},
    {"weight_decay_mode": "wd", "weight_decay": 0.1},
    {"weight_decay": 0.0, "lpwd_decay_timescale": 2.0},
    {"weight_decay": 0.1, "lpwd_decay_timescale": None},
]


def test_each_trial_starts_from_the_runs_settings_and_keeps_a_none(tmp_path: Path) -> None:
    built: list[tuple] = []

    class Recording(LPWDTrainer):
        def create_optimizer(self, model=None):
            fresh = self.optimizer is None
            optimizer = super().create_optimizer(model)
            if fresh:
                c = self.lpwd_config
                built.append((c.mode, c.layerwise, c.cautious, c.decay_timescale, c.weight_decay))
            return optimizer

    args = LPWDTrainingArguments(**common_args(tmp_path, learning_rate=0.01, max_steps=2, eval_strategy="no"))
    trainer = Recording(model_init=lambda: tiny_bert(layers=LAYERS), args=args,
                        train_dataset=TokenDataset(16), eval_dataset=TokenDataset(8, seed=1))
    trainer.hyperparameter_search(hp_space=lambda trial: SPACES[trial.number], backend="optuna",
                                  n_trials=len(SPACES), direction="minimize")
    assert [b[:4] for b in built] == [
        ("pwd", True, False, None),
        ("lpwd", True, False, None),  # None is the mode's default (layer-wise), not bool(None)
        ("wd", False, True, None),
        ("wd", False, False, None),  # not carried over from the trial before
        ("lpwd", True, False, 2.0),  # the run's mode: trial 3's wd is not carried over
        ("lpwd", True, False, None),
    ]
    assert built[-1][4] == 0.1 and args.lpwd_layerwise is None and args.lpwd_decay_timescale is None


def test_a_dict_trials_none_is_kept(tmp_path: Path) -> None:
    from transformers.trainer_utils import HPSearchBackend

    args = LPWDTrainingArguments(output_dir=str(tmp_path), use_cpu=True, lpwd_layerwise=True,
                                 lpwd_decay_timescale=2.0, weight_decay=0.0, report_to="none")
    trainer = LPWDTrainer(model=tiny_bert(layers=LAYERS), args=args, train_dataset=TokenDataset(4))
    trainer.hp_search_backend = HPSearchBackend.RAY
    trainer._hp_search_setup({"lpwd_layerwise": None, "lpwd_decay_timescale": None, "weight_decay": 0.1})
    assert (args.lpwd_layerwise, args.lpwd_decay_timescale, args.weight_decay) == (None, None, 0.1)
