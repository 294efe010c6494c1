"""The decay rules through the Trainer: flags reach the optimizer, the timescale sets λ, bad combinations
refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import HfArgumentParser

from hf_lpwd import LPWDConfig, LPWDTrainer, LPWDTrainingArguments
from tests.test_trainer import common_args
from tests.tiny import TokenDataset, tiny_bert

LR = 5e-3


@pytest.mark.parametrize(
    "coupling, budget, grad_accum, steps_per_epoch",
    [
        ("coupled", {"num_train_epochs": 1, "max_steps": -1}, 1, 6),  # epoch-based: 24 examples / batch 4
        ("coupled", {"max_steps": 4}, 2, 3),  # max_steps run: the Trainer still counts 3 steps per epoch
        ("independent", {"max_steps": 2}, 1, 6),
        ("corrected", {"max_steps": 2}, 1, 6),
    ],
)
def test_the_timescale_sets_lambda_from_the_trainers_steps_per_epoch(
    tmp_path: Path, coupling: str, budget: dict, grad_accum: int, steps_per_epoch: int
) -> None:
    tau = 2.5
    args = LPWDTrainingArguments(**common_args(tmp_path, learning_rate=LR,
                                               gradient_accumulation_steps=grad_accum, **budget),
                                 lpwd_decay_timescale=tau, lpwd_lr_coupling=coupling,
                                 weight_decay_mode="lpwd")
    trainer = LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(24))
    trainer.train()
    expected = 1 / (tau * steps_per_epoch) if coupling == "independent" else 1 / (LR * tau * steps_per_epoch)
    assert trainer.lpwd_config.weight_decay == pytest.approx(expected, rel=1e-12)
    head = max(g["depth"] for g in trainer.lpwd_optimizer.param_groups)
    head_lambda = max(g["weight_decay"] for g in trainer.lpwd_optimizer.param_groups if g["depth"] == head)
    assert head_lambda == pytest.approx(expected, rel=1e-12)  # τ sets λ: the head's rate under the profile
    trainer.save_model()
    saved = json.loads((Path(args.output_dir) / "lpwd_config.json").read_text())
    assert saved["decay_timescale"] == tau and saved["weight_decay"] == pytest.approx(expected, rel=1e-12)
    assert saved["lr_coupling"] == coupling
    card = (Path(args.output_dir) / "README.md").read_text()
    assert f"decay timescale τ | {tau:g} epochs" in card


def test_rule_flags_reach_the_optimizer_and_the_saved_config(tmp_path: Path) -> None:
    parser = HfArgumentParser(LPWDTrainingArguments)
    (args,) = parser.parse_args_into_dataclasses([
        "--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--report_to", "none", "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--weight_decay_mode", "wd", "--lpwd_layerwise", "true",
        "--lpwd_lr_coupling", "independent", "--lpwd_cautious", "true", "--weight_decay", "0.01",
        "--learning_rate", "1e-3", "--save_strategy", "no",
    ])
    trainer = LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(8))
    trainer.train()
    opt = trainer.lpwd_optimizer
    assert (opt.mode, opt.lr_coupling, opt.cautious) == ("wd", "independent", True)
    assert all(g["initial_lr"] == pytest.approx(1e-3) for g in opt.param_groups)
    trainer.save_model()
    loaded = LPWDConfig.from_pretrained(args.output_dir)
    assert (loaded.lr_coupling, loaded.cautious, loaded.decay_timescale) == ("independent", True, None)
    # A saved config carries the rules into the next run's arguments.
    values = LPWDTrainingArguments.saved_config_values(loaded)
    assert (values["lpwd_lr_coupling"], values["lpwd_cautious"]) == ("independent", True)


def test_a_run_whose_shrink_exceeds_one_warns_naming_the_flag(tmp_path: Path, caplog) -> None:
    import transformers

    transformers.logging.enable_propagation()
    try:
        # 4 steps at a constant lr 5e-3 and λ = 60: S = 4 · 5e-3 · 60 = 1.2 at the head.
        args = LPWDTrainingArguments(**common_args(tmp_path, weight_decay=60.0, lr_scheduler_type="constant"),
                                     weight_decay_mode="pwd")
        with caplog.at_level("WARNING"):
            trainer = LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(16))
            trainer.train()
    finally:
        transformers.logging.disable_propagation()
    # pytest may list a record twice
    records = {id(r): r for r in caplog.records if "shrink" in r.getMessage()}
    warnings = [r.getMessage() for r in records.values()]
    assert (len(warnings) == 1 and "decayed parameters: S = 1.2" in warnings[0]
            and "--weight_decay" in warnings[0])


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"lpwd_lr_coupling": "sqrt"}, r"--lpwd_lr_coupling='sqrt' is not one of"),
        ({"lpwd_decay_timescale": 0.0}, r"--lpwd_decay_timescale=0.0 must be a number of epochs > 0"),
        ({"lpwd_decay_timescale": 2.0, "weight_decay": 0.1},
         r"--lpwd_decay_timescale=2 and --weight_decay=0.1 both set λ"),
        ({"lpwd_cautious": True}, r"--lpwd_cautious=true needs the wd timing.*pwd decays before the forward"),
        ({"lpwd_cautious": True, "weight_decay_mode": "rwd"}, r"--lpwd_cautious=true needs the wd timing"),
    ],
)
def test_bad_rule_arguments_name_the_flag_before_any_output(tmp_path: Path, overrides: dict,
                                                            match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LPWDTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, **overrides)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"lpwd_cautious": True, "weight_decay_mode": "wd", "optim": "adafactor"},
         r"Adafactor is not one of them"),
        ({"lpwd_lr_coupling": "independent", "weight_decay": 1.5},
         r"--weight_decay=1.5 with --lpwd_lr_coupling independent.*must stay below 1"),
    ],
)
def test_rule_and_base_combinations_are_refused_by_the_argument_check(tmp_path: Path, overrides,
                                                                      match) -> None:
    from hf_lpwd.trainer import check_training_arguments

    args = LPWDTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, **overrides)
    with pytest.raises(ValueError, match=match):
        check_training_arguments(args)
    assert not (tmp_path / "out").exists()
