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


@pytest.mark.parametrize(
    "overrides, match",
    [  # the lr rises above --learning_rate where min_lr (or min_lr_ratio) is above it: d = η̄·rise·λ
        # warmup_stable_decay, 6 steps (3 stable, 3 decaying), min_lr_ratio 3: step 5's scale is
        # 3 + (1 − 3)·½(1 + cos(2π/3)) = 2.5, so d = 0.005 × 2.5 × 100 = 1.25 (0.5 at the peak)
        ({"lr_scheduler_type": "warmup_stable_decay", "max_steps": 6,
          "lr_scheduler_kwargs": {"num_decay_steps": 3, "min_lr_ratio": 3.0}, "weight_decay": 100.0},
         r"--learning_rate=0.005 × 2.5 \(the highest lr of --lr_scheduler_type warmup_stable_decay .*\) × "
         r"--weight_decay=100: the per-step decay d = 1.25 "),
        # cosine_with_min_lr, 4 steps, min_lr 0.02 = 4·η̄: step 3's scale is 4 + (1 − 4)·½(1 + cos(3π/4))
        # = 3.56066, so d = 0.005 × 3.56066 × 60 = 1.0682
        ({"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr": 0.02},
          "weight_decay": 60.0},
         r"--learning_rate=0.005 × 3.56066 \(the highest lr of --lr_scheduler_type cosine_with_min_lr .*"
         r"d = 1.0682"),
        # independent coupling: d = (η_t/η̄)·λ = 2.5 × 0.5
        ({"lr_scheduler_type": "warmup_stable_decay", "max_steps": 6, "lpwd_lr_coupling": "independent",
          "lr_scheduler_kwargs": {"num_decay_steps": 3, "min_lr_ratio": 3.0}, "weight_decay": 0.5},
         r"--weight_decay=0.5 × 2.5 \(the highest lr .*\) with --lpwd_lr_coupling independent .*d = 1.25 "),
    ],
)
def test_a_schedule_that_lifts_the_lr_above_its_peak_is_refused_before_any_output(
        tmp_path: Path, overrides: dict, match: str) -> None:
    args = LPWDTrainingArguments(**{**common_args(tmp_path, learning_rate=LR), **overrides})
    with pytest.raises(ValueError, match=match + r".*keep the schedule's lr at or below --learning_rate"):
        LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(8))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "overrides, tau, examples, match",
    [
        # τ = 1 epoch of 2 steps gives λ = 1/(η̄·2), d = 0.5 at the peak; the lr then rises to 2.5·η̄
        # (d = 1.25), which only the built schedule can say (λ is set when the optimizer is built)
        ({"learning_rate": LR, "max_steps": 6, "lr_scheduler_type": "warmup_stable_decay",
          "lr_scheduler_kwargs": {"num_decay_steps": 3, "min_lr_ratio": 3.0}}, 1.0, 8,
         r"the lr schedule reaches lr=0.0125 in param group \d+ at step 5, with weight_decay=100 and "
         r"coupled coupling: the per-step decay d = 1.25 .*give a longer --lpwd_decay_timescale"),
        # with 4 accumulation steps the epoch is 1 optimizer step (the bound before the Trainer says 4), so
        # τ = 0.5 epochs is half a step: refused when λ is set, naming τ, not λ
        ({"learning_rate": 1e-3, "max_steps": 2, "gradient_accumulation_steps": 4}, 0.5, 16,
         r"^--lpwd_decay_timescale=0.5 epochs is 0.5 optimizer steps \(1 steps per epoch\): .* is 2 and "
         r"must stay below 1 .*give --lpwd_decay_timescale above 1 epochs$"),
    ],
)
def test_a_timescale_lambda_too_large_for_the_run_is_refused_before_the_first_step(
        tmp_path: Path, overrides: dict, tau: float, examples: int, match: str) -> None:
    args = LPWDTrainingArguments(**common_args(tmp_path, save_strategy="steps", save_steps=1, **overrides),
                                 lpwd_decay_timescale=tau)
    trainer = LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(examples))
    with pytest.raises(ValueError, match=match):
        trainer.train()
    assert trainer.state.global_step == 0
    assert not list((tmp_path / "out").iterdir())  # no checkpoint, no config


@pytest.mark.parametrize(
    "coupling, scales, expected",
    [  # groups: λ = 0.5 at η̄ = 1, λ = 0 at η̄ = 2 (never decays), λ = 0.25 at η̄ = 0.5
        ("coupled", [[0.5, 1.0, 1.9], [3.0, 3.0, 3.0], [1.0, 1.0, 1.0]], (0.95, 0, 2)),     # 1 × 1.9 × 0.5
        # 4.1 × 0.25 (group 0: 1.2 × 0.5)
        ("independent", [[0.5, 1.0, 1.2], [3.0, 3.0, 3.0], [1.0, 4.1, 1.0]], (1.025, 2, 1)),
        # (1 × 1.2)² / 1 × 0.5 (group 2: (0.5 × 2)² / 0.5 × 0.25 = 0.5)
        ("corrected", [[0.5, 1.0, 1.2], [3.0, 3.0, 3.0], [1.0, 2.0, 1.0]], (0.72, 0, 2)),
    ],
)
def test_highest_decay_reads_every_group_and_step(coupling: str, scales: list, expected: tuple) -> None:
    from hf_lpwd.schedule import highest_decay

    groups = [{"weight_decay": 0.5}, {"weight_decay": 0.0}, {"weight_decay": 0.25}]
    decay, group, step = highest_decay(groups, [1.0, 2.0, 0.5], scales, coupling)
    assert (group, step) == expected[1:] and decay == pytest.approx(expected[0], rel=1e-12)


def test_a_timescale_shorter_than_a_step_is_refused_before_any_output(tmp_path: Path) -> None:
    # 16 examples in batches of 4: at most 4 steps per epoch, so τ = 0.2 epochs is at most 0.8 steps and
    # d = 1/(τ·S_e) >= 1.25 at the peak lr, whatever the lr or the coupling
    args = LPWDTrainingArguments(**common_args(tmp_path, learning_rate=1e-3, max_steps=-1,
                                               num_train_epochs=1), lpwd_decay_timescale=0.2)
    match = (r"^--lpwd_decay_timescale=0.2 epochs is at most 0.8 optimizer steps \(at most 4 steps per "
             r"epoch; 16 examples in batches of 4\): .* is at least 1.25 and must stay below 1 .*give "
             r"--lpwd_decay_timescale above 0.25 epochs$")
    with pytest.raises(ValueError, match=match):
        LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(16))
    assert not (tmp_path / "out").exists()


def test_a_timescale_over_data_without_a_length_says_an_epoch_is_the_run(tmp_path: Path, caplog) -> None:
    from torch.utils.data import IterableDataset

    class Stream(IterableDataset):
        def __iter__(self):
            data = TokenDataset(16)
            return iter([data[i] for i in range(len(data))])

    args = LPWDTrainingArguments(**common_args(tmp_path, learning_rate=1e-3, max_steps=4),
                                 lpwd_decay_timescale=2.0)
    trainer = LPWDTrainer(model=tiny_bert(), args=args, train_dataset=Stream())
    from transformers.utils import logging as hf_logging

    hf_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            trainer.train()
    finally:
        hf_logging.disable_propagation()
    said = "no length, so the Trainer counts the whole run (--max_steps 4) as one epoch: " \
           "--lpwd_decay_timescale 2 epochs is 8 optimizer steps"
    assert any(said in r.getMessage() for r in caplog.records)
    assert trainer.lpwd_config.weight_decay == pytest.approx(1 / (1e-3 * 2.0 * 4), rel=1e-12)


@pytest.mark.parametrize(
    "yaml_line, match",
    [  # PyYAML (YAML 1.1) reads 2e-5 as text; quotes make any value text
        ("learning_rate: 2e-5", r"^--learning_rate must be a number, got '2e-5' \(text: PyYAML reads 1e-2"),
        ("weight_decay: 1e-2", r"^--weight_decay must be a number, got '1e-2' \(text: PyYAML reads 1e-2"),
        ("adam_epsilon: 1e-8", r"^--adam_epsilon must be a number, got '1e-8'"),
        ('lpwd_layerwise: "false"',
         r"^--lpwd_layerwise must be true or false, got 'false' \(text, from quotes"),
    ],
)
def test_numbers_and_booleans_read_as_text_from_a_yaml_file_are_refused_naming_them(
        tmp_path: Path, yaml_line: str, match: str) -> None:
    file = tmp_path / "args.yaml"
    file.write_text(f"output_dir: {tmp_path / 'out'}\nuse_cpu: true\nreport_to: none\n{yaml_line}\n")
    with pytest.raises(ValueError, match=match):
        HfArgumentParser(LPWDTrainingArguments).parse_yaml_file(str(file))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "edit, match",
    [
        ({"weight_decay": -1.0},
         r"lpwd_config\.json: LPWDConfig\.weight_decay=-1\.0 must be a finite number"),
        ({"layerwise": "true"}, r"lpwd_config\.json: LPWDConfig\.layerwise must be true or false"),
        ({"base_optimizer": "adamw_tourch"}, r"base_optimizer='adamw_tourch' is not an --optim value"),
    ],
)
def test_a_hand_edited_saved_config_is_refused_naming_the_file_and_the_flag(tmp_path: Path, edit: dict,
                                                                            match: str) -> None:
    LPWDConfig(mode="lpwd", weight_decay=0.1).save_pretrained(tmp_path / "cfg")
    file = tmp_path / "cfg" / "lpwd_config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), **edit}))
    tail = rf".*\(read for --lpwd_config {tmp_path / 'cfg'}: fix the file\)$"
    with pytest.raises(ValueError, match=match + tail):
        LPWDTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True,
                              lpwd_config=str(tmp_path / "cfg"))
    assert not (tmp_path / "out").exists()


def test_a_fine_tuning_sized_shrink_is_recorded_to_significant_digits(tmp_path: Path) -> None:
    # layer-wise wd at a constant lr: S_d = T·η·λ·(d+1)/(N+2) = 4 × 1e-4 × 1e-3 × (d+1)/4 = (d+1)·1e-7 on the
    # 2-block BERT (6 decimals would record 0 for every depth)
    args = LPWDTrainingArguments(**common_args(tmp_path, learning_rate=1e-4, lr_scheduler_type="constant",
                                               max_steps=4), weight_decay=1e-3, weight_decay_mode="wd",
                                 lpwd_layerwise=True)
    trainer = LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(16))
    trainer.train()
    trainer.save_model()
    saved = json.loads((tmp_path / "out" / "lpwd_config.json").read_text())
    assert saved["shrink"] == pytest.approx(4e-7, rel=1e-6)
    assert saved["depth_shrink"] == pytest.approx({str(d): (d + 1) * 1e-7 for d in range(4)}, rel=1e-6)


@pytest.mark.parametrize("max_steps, warmup", [(1_000_000, 1000), (1_000_000, 0.1), (500, 100), (-1, 0.05)])
def test_the_schedules_highest_lr_is_found_at_any_length_and_warm_up(max_steps: int, warmup: float) -> None:
    # cosine_with_min_lr with min_lr = 2·η̄ ends at 2·η̄; a million steps are probed at a nominal length
    from transformers import TrainingArguments

    from hf_lpwd.schedule import schedule_rise

    args = TrainingArguments(output_dir="unused", max_steps=max_steps, warmup_steps=warmup,
                             lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr": 2e-4})
    assert schedule_rise(args, 1e-4) == pytest.approx(2.0, abs=1e-4)
