"""A run the Trainer starts again, and the checks before anything is written.

* ``auto_find_batch_size``: after an out-of-memory error the Trainer runs a new attempt with the optimizer it
  already built.  pwd's decay applied for the step that failed is divided out first (the new attempt's first
  forward sees θ_k·(1 − η_0·λ), θ_k the weights of the last step taken), and a λ set by
  ``--lpwd_decay_timescale`` follows the new attempt's steps per epoch.
* A resume with other LPWD settings than the checkpoint's is refused, naming each flag: the checkpoint's
  optimizer state would override them (torch's ``load_state_dict`` restores the param groups) while
  ``lpwd_config.json`` recorded the new values.  A checkpoint without optimizer state (``--save_only_model``)
  is refused where θ₀ or pwd's pending decay would be lost.
* A metric-driven schedule (``reduce_lr_on_plateau``, ``greedy``) counts evaluations, not steps: the fold
  still knows the last step, so the checkpoint written at ``max_steps`` is the final model, bit for bit.
* ``LPWDTrainer(...)`` refuses what the arguments (and the model) allow before Trainer's ``__init__``
  creates the output folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file
from torch import nn
from transformers import Trainer, TrainingArguments

from hf_lpwd import LPWDConfig, LPWDMixin, LPWDTrainer, LPWDTrainingArguments
from tests.tiny import ROOT, TokenDataset, common_args, tiny_bert

OOM = "CUDA out of memory. Tried to allocate (simulated)"


class OutOfMemoryAbove2(nn.Module):
    """A tiny BERT whose forward raises the out-of-memory error accelerate looks for on a batch > 2, from
    its ``fail_from``-th forward on; records the classifier's weight each forward sees."""

    def __init__(self, fail_from: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.bert = tiny_bert()
        self.fail_from, self.calls, self.seen = fail_from, 0, []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor):
        self.seen.append((input_ids.shape[0], self.bert.classifier.weight.detach().clone()))
        self.calls += 1
        if input_ids.shape[0] > 2 and self.calls > self.fail_from:
            raise RuntimeError(OOM)
        return self.bert(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def test_a_retry_after_out_of_memory_starts_from_the_last_step_taken(tmp_path: Path) -> None:
    """pwd, linear schedule over 6 steps, λ·η = 0.01: the 3rd forward (step 2, batch 4) fails.  Its weights
    carry step 2's factor 1 − η_2·λ of the first attempt; the attempt that runs (batch 2, the schedule from
    step 0; one at batch 3 failed at its first forward) must see θ_2·(1 − η_0·λ), not θ_2·(1 − η_2·λ) (0.17 %
    apart) nor a factor per failed attempt."""
    lr, lam = 1e-2, 1.0
    model = OutOfMemoryAbove2(fail_from=2)
    args = LPWDTrainingArguments(**common_args(tmp_path, auto_find_batch_size=True, max_steps=6,
                                               learning_rate=lr, weight_decay=lam, weight_decay_mode="pwd",
                                               lr_scheduler_type="linear"))
    LPWDTrainer(model=model, args=args, train_dataset=TokenDataset(24)).train()
    sizes = [size for size, _ in model.seen]
    assert sizes[:5] == [4, 4, 4, 3, 2]  # accelerate retries at 0.9× the batch: 3 fails at once, then 2
    failed, retry = model.seen[2][1].double(), model.seen[4][1].double()
    theta_2 = failed / (1 - lr * (4 / 6) * lam)  # the first attempt's step 2: η_2 = η·(1 − 2/6)
    expected = theta_2 * (1 - lr * lam)  # the retry's step 0: η_0 = η
    torch.testing.assert_close(retry, expected, rtol=1e-6, atol=1e-9)


def test_a_retry_sets_the_timescale_lambda_from_its_own_steps_per_epoch(tmp_path: Path) -> None:
    """τ = 2 epochs: batch 4 gives 6 steps per epoch (3: 8), the attempt that runs at batch 2 gives 12, so
    λ = 1/(η·τ·12)."""
    settings = dict(weight_decay_mode="lpwd", lpwd_decay_timescale=2.0, learning_rate=1e-2, max_steps=2)
    retried = LPWDTrainer(model=OutOfMemoryAbove2(fail_from=0), train_dataset=TokenDataset(24),
                          args=LPWDTrainingArguments(**common_args(tmp_path, auto_find_batch_size=True,
                                                                   **settings)))
    retried.train()
    assert [size for size, _ in retried.model.seen][:3] == [4, 3, 2]
    assert retried.lpwd_config.weight_decay == 1 / (1e-2 * 2.0 * 12)
    direct = LPWDTrainer(model=OutOfMemoryAbove2(fail_from=0), train_dataset=TokenDataset(24),
                         args=LPWDTrainingArguments(**common_args(tmp_path / "direct",
                                                                  per_device_train_batch_size=2, **settings)))
    direct.create_optimizer()
    assert ([g["weight_decay"] for g in retried.lpwd_optimizer.param_groups]
            == [g["weight_decay"] for g in direct.lpwd_optimizer.param_groups])
    assert retried.lpwd_config.record.depth_weight_decay == direct.lpwd_config.record.depth_weight_decay


# ----------------------------------------------------------------------------------------------- resume
def _trained_checkpoint(tmp_path: Path, **settings) -> Path:
    torch.manual_seed(0)
    args = LPWDTrainingArguments(**common_args(tmp_path, save_strategy="steps", save_steps=2, **settings))
    LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(32)).train()
    return tmp_path / "out" / "checkpoint-2"


TRAINED = dict(weight_decay_mode="lpwd", weight_decay=0.5)


@pytest.mark.parametrize(
    "trained, resumed, match",
    [
        (TRAINED, dict(weight_decay_mode="lpwd", weight_decay=0.1),
         r"--weight_decay 0\.1 \(checkpoint: 0\.5\)"),
        (TRAINED, dict(weight_decay_mode="pwd", weight_decay=0.5),
         r"--weight_decay_mode 'pwd' \(checkpoint: 'lpwd'\), --lpwd_layerwise False \(checkpoint: True\)"),
        (TRAINED, dict(weight_decay_mode="wd", weight_decay=0.5),  # the mode written, not lpwd's timing
         r"--weight_decay_mode 'wd' \(checkpoint: 'lpwd'\), --lpwd_layerwise False \(checkpoint: True\)"),
        (TRAINED, dict(TRAINED, lpwd_layer_lr_decay=0.8), r"--lpwd_layer_lr_decay 0\.8 \(checkpoint: 1\.0\)"),
        (TRAINED, dict(TRAINED, lpwd_decay_target="init"),
         r"--lpwd_decay_target 'init' \(checkpoint: 'zero'\)"),
        (dict(weight_decay_mode="lpwd", lpwd_decay_timescale=4.0),
         dict(weight_decay_mode="lpwd", lpwd_decay_timescale=2.0),
         r"--lpwd_decay_timescale 2\.0 \(checkpoint: 4\.0\)"),
    ],
)
def test_a_resume_with_other_settings_is_refused_naming_each_flag(tmp_path: Path, trained: dict,
                                                                   resumed: dict, match: str) -> None:
    checkpoint = _trained_checkpoint(tmp_path, **trained)
    written = sorted(p.name for p in checkpoint.parent.iterdir())
    args = LPWDTrainingArguments(**common_args(tmp_path, save_strategy="steps", save_steps=2, **resumed))
    trainer = LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(32))
    with pytest.raises(ValueError, match=match):
        trainer.train(resume_from_checkpoint=str(checkpoint))
    with pytest.raises(ValueError, match="these would be ignored"):
        trainer.train(resume_from_checkpoint=True)  # the last checkpoint of the output folder
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == written


def test_a_stock_trainer_checkpoint_resumes_as_wd_and_is_refused_with_another_decay(tmp_path: Path) -> None:
    """The stock Trainer's checkpoint (no lpwd_config.json): lpwd used to fail mid-train() with torch's "a
    different number of parameter groups", rwd/pwd to resume silently with another timing; wd resumes."""
    torch.manual_seed(0)
    stock = TrainingArguments(**common_args(tmp_path, save_strategy="steps", save_steps=2, weight_decay=0.5))
    Trainer(model=tiny_bert(), args=stock, train_dataset=TokenDataset(32)).train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    for mode, listed in (("lpwd", "--weight_decay_mode 'lpwd', --lpwd_layerwise True"),
                         ("pwd", "--weight_decay_mode 'pwd'")):
        args = LPWDTrainingArguments(**common_args(tmp_path, weight_decay_mode=mode, weight_decay=0.5))
        trainer = LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(32))
        with pytest.raises(ValueError, match=f"resuming {checkpoint} with {listed}: a Trainer without LPWD"):
            trainer.train(resume_from_checkpoint=str(checkpoint))
    args = LPWDTrainingArguments(**common_args(tmp_path, weight_decay_mode="wd", weight_decay=0.5))
    resumed = LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(32))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == common_args(tmp_path)["max_steps"]


def test_the_settings_a_checkpoint_keeps_resume_and_a_given_config_is_named_by_its_fields(
        tmp_path: Path) -> None:
    """Same decay with another rounding flag (not in the optimizer state), and τ with its derived λ: both
    resume; with ``LPWDMixin(lpwd_config=...)`` the refusal names the config's fields."""
    checkpoint = _trained_checkpoint(tmp_path, weight_decay_mode="lpwd", lpwd_decay_timescale=4.0)
    args = LPWDTrainingArguments(**common_args(tmp_path, save_strategy="no", weight_decay_mode="lpwd",
                                               lpwd_decay_timescale=4.0, lpwd_stochastic_rounding=False))
    LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(32)).train(str(checkpoint))
    other = LPWDTrainer(model=tiny_bert(), args=TrainingArguments(**common_args(tmp_path)),
                        train_dataset=TokenDataset(32), lpwd_config=LPWDConfig(mode="wd", weight_decay=0.1))
    with pytest.raises(ValueError, match=r"LPWDConfig\.mode 'wd' \(checkpoint: 'lpwd'\)"):
        other.train(resume_from_checkpoint=str(checkpoint))


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(weight_decay_mode="wd", lpwd_decay_target="init"), r"θ₀, the weights the decay returns to"),
        (dict(weight_decay_mode="pwd"), r"already carry pwd's decay for the next step"),
        (dict(weight_decay_mode="wd"), None),  # the stock Trainer's resume: a fresh AdamW, as stock
    ],
)
def test_a_checkpoint_without_optimizer_state_is_refused_where_it_would_lose_decay(
        tmp_path: Path, settings: dict, match: str | None) -> None:
    checkpoint = _trained_checkpoint(tmp_path, save_only_model=True, weight_decay=0.5, **settings)
    args = LPWDTrainingArguments(**common_args(tmp_path, weight_decay=0.5, **settings))
    trainer = LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(32))
    if match is None:
        trainer.train(resume_from_checkpoint=str(checkpoint))
        assert trainer.state.global_step == 4
        return
    refusal = rf"has no optimizer state \(saved with --save_only_model\).*{match}"
    with pytest.raises(ValueError, match=refusal):
        trainer.train(resume_from_checkpoint=str(checkpoint))


# ----------------------------------------------------------------------------------- metric-driven schedules
@pytest.mark.parametrize("schedule", ["reduce_lr_on_plateau", "greedy"])
def test_a_metric_driven_schedule_ends_at_max_steps_with_nothing_folded(tmp_path: Path,
                                                                        schedule: str) -> None:
    """The checkpoint at ``max_steps`` is the final model, bitwise (before: one factor 1 − η·λ_d apart, the
    scheduler's evaluation count taken for the step index); no decay is pending."""
    torch.manual_seed(0)
    args = LPWDTrainingArguments(**common_args(
        tmp_path, weight_decay_mode="lpwd", weight_decay=0.5, lr_scheduler_type=schedule, max_steps=6,
        eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=6,
        metric_for_best_model="loss"))
    trainer = LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(24),
                          eval_dataset=TokenDataset(8, seed=1))
    trainer.train()
    assert trainer.lpwd_optimizer.pending_decay == {}
    saved = load_file(str(tmp_path / "out" / "checkpoint-6" / "model.safetensors"))
    final = trainer.model.state_dict()
    assert all(torch.equal(saved[name], final[name]) for name in saved)


# ----------------------------------------------------------------------------------- before the output folder
@pytest.mark.parametrize(
    "model, overrides, match",
    [
        (tiny_bert, dict(learning_rate=0.5, weight_decay=2.0), r"the per-step decay d = 1 must stay below 1"),
        # at λ = 0 no decay check reads the lr: torch's "Invalid learning rate" came at train(), folder made
        (tiny_bert, dict(learning_rate=-1e-4, weight_decay=0.0), r"--learning_rate=-0\.0001 is negative"),
        (tiny_bert, dict(optim="schedule_free_adamw"), r"schedule-free optimizers keep two weight sequences"),
        (tiny_bert, dict(optim="lomo"), r"LOMO"),
        (lambda: nn.Sequential(nn.Linear(4, 4)), dict(weight_decay_mode="lpwd", weight_decay=0.1),
         r"block"),
    ],
)
def test_the_trainer_refuses_before_it_creates_the_output_folder(tmp_path: Path, model, overrides: dict,
                                                                  match: str) -> None:
    args = TrainingArguments(**common_args(tmp_path, **{k: v for k, v in overrides.items()
                                                        if not k.startswith("weight_decay_mode")}))
    config = LPWDConfig(mode=overrides.get("weight_decay_mode", "lpwd"), weight_decay=args.weight_decay)
    with pytest.raises(ValueError, match=match):
        LPWDTrainer(model=model(), args=args,
                    lpwd_config=config if "weight_decay_mode" in overrides else None)
    assert not (tmp_path / "out").exists()


class _RefFirst(Trainer):
    """DPOTrainer's order: ``(model, ref_model, args, ...)``."""

    def __init__(self, model, ref_model, args, train_dataset=None) -> None:
        super().__init__(model=model, args=args, train_dataset=train_dataset)


class _PassThrough(Trainer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)


@pytest.mark.parametrize("trainer_cls", [_RefFirst, _PassThrough])
def test_positional_arguments_of_any_trainer_are_checked_before_the_output_folder(
        tmp_path: Path, trainer_cls: type) -> None:
    """The arguments found by the ``__init__``'s own names (DPOTrainer's ``args`` is its third): before, the
    mixin took the second positional as ``args`` and the refusal came after the folder was made."""
    class Mixed(LPWDMixin, trainer_cls):
        pass

    args = LPWDTrainingArguments(**common_args(tmp_path, weight_decay_mode="lpwd", weight_decay=0.1,
                                               lpwd_layer_pattern=r"nothing\.(\d+)\."))
    given = (tiny_bert(), None, args) if trainer_cls is _RefFirst else (tiny_bert(), args)
    with pytest.raises(ValueError, match="lpwd_layer_pattern"):
        Mixed(*given, train_dataset=TokenDataset(8))
    assert not (tmp_path / "out").exists()


class _ScheduleFree(torch.optim.SGD):
    """Stands for schedulefree's classes: an optimizer with ``train()`` / ``eval()`` of its own."""

    def train(self) -> None: ...

    def eval(self) -> None: ...


def _optimi_stable_adamw() -> type:
    return pytest.importorskip("optimi").StableAdamW


@pytest.mark.parametrize(
    "base, overrides, match",
    [
        # torch-optimi's decouple_lr: (1 − (η/max_lr)·λ); before, LPWD's wd decayed 1000× less, silently
        (lambda: (_optimi_stable_adamw(), {"lr": 1e-3, "decouple_lr": True, "max_lr": 1e-3}), {},
         r"optimizer_cls_and_kwargs: optimi\.\w+\.StableAdamW with decouple_lr=True.*lr_coupling"),
        # Adafactor's own default: step and decay scaled by RMS(θ); before, 50× more decay than the stock one
        (lambda: (transformers.optimization.Adafactor, {"lr": 1e-3, "relative_step": False}), {},
         r"optimizer_cls_and_kwargs: transformers\.optimization\.Adafactor with scale_parameter=True"),
        (lambda: (transformers.optimization.Adafactor, {"scale_parameter": False}), {},
         r"relative_step=True sets its own lr \(lr=None\)"),
        (lambda: (_ScheduleFree, {"lr": 1e-3}), {}, r"_ScheduleFree is a schedule-free optimizer"),
        (lambda: (torch.optim.RMSprop, {"lr": 1e-3}), dict(weight_decay_mode="wd", lpwd_cautious=True),
         r"torch\.optim\.rmsprop\.RMSprop is not one of them"),
        (lambda: (torch.optim.AdamW, {"lr": 0.5}), dict(weight_decay=4.0),
         r"optimizer_cls_and_kwargs' lr=0\.5 × --weight_decay=4: the per-step decay d = 2"),
        (lambda: (torch.optim.SGD, {"lr": -0.5}), {}, r"optimizer_cls_and_kwargs' lr=-0\.5 is negative"),
    ],
)
def test_a_base_given_as_optimizer_cls_and_kwargs_is_refused_before_the_output_folder(
        tmp_path: Path, base, overrides: dict, match: str) -> None:
    """``optimizer_cls_and_kwargs`` gets the checks ``--optim`` gets, in ``LPWDTrainer(...)``: before, they
    came at ``train()`` (an empty output folder left behind) or, for the bases with a decay rule of their
    own, never."""
    args = LPWDTrainingArguments(**common_args(tmp_path, **{"weight_decay": 0.1, **overrides}))
    with pytest.raises(ValueError, match=match):
        LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(8),
                    optimizer_cls_and_kwargs=base())
    assert not (tmp_path / "out").exists()


def test_the_timescale_lambda_follows_the_lr_the_base_is_built_with(tmp_path: Path) -> None:
    """τ = 10 epochs, 3 steps per epoch, ``--learning_rate 1e-3`` but the base built at lr 1e-2: the
    per-step decay is 1/(τ·S_e) = 1/30, so λ = 1/(1e-2·10·3); before, λ came from --learning_rate (10×)."""
    args = LPWDTrainingArguments(**common_args(tmp_path, weight_decay_mode="pwd", lpwd_decay_timescale=10.0,
                                               learning_rate=1e-3, max_steps=1,
                                               per_device_train_batch_size=4))
    trainer = LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(12),
                          optimizer_cls_and_kwargs=(torch.optim.AdamW, {"lr": 1e-2}))
    trainer.train()
    assert trainer.lpwd_config.weight_decay == pytest.approx(1 / (1e-2 * 10.0 * 3), rel=1e-12)
    assert {g["initial_lr"] for g in trainer.lpwd_optimizer.param_groups} == {1e-2}


def test_an_optimizer_built_outside_the_trainer_is_refused_unless_it_is_lpwd(tmp_path: Path) -> None:
    """``optimizers=(AdamW(...), None)``: LPWD cannot wrap built groups; before, the run trained with no decay
    at all while ``lpwd_config.json`` and the card recorded lpwd."""
    from hf_lpwd import LPWD

    model = tiny_bert()
    args = LPWDTrainingArguments(**common_args(tmp_path, weight_decay=0.5))
    with pytest.raises(ValueError, match=r"optimizers=\(AdamW\(\.\.\.\), \.\.\.\).*optimizer_cls_and_kwargs"):
        LPWDTrainer(model=model, args=args, optimizers=(torch.optim.AdamW(model.parameters()), None))
    assert not (tmp_path / "out").exists()
    own = LPWD(model.parameters(), mode="pwd", lr=1e-3, weight_decay=0.5)
    assert LPWDTrainer(model=model, args=args, optimizers=(own, None)).lpwd_optimizer is own
    # one whose settings are not the run's: the record (lpwd_config.json, the card) would describe another run
    unlike = LPWD(model.parameters(), base="sgd", mode="wd", lr=1e-3, weight_decay=0.5, cautious=True)
    with pytest.raises(ValueError, match=r"the LPWD you built is not what this run would record: "
                                         r"--weight_decay_mode 'lpwd' \(the LPWD: 'wd'\), "
                                         r"--lpwd_cautious False \(the LPWD: True\)"):
        LPWDTrainer(model=model, args=LPWDTrainingArguments(**common_args(tmp_path / "b", weight_decay=0.5)),
                    optimizers=(unlike, None))
    assert not (tmp_path / "b" / "out").exists()
    matching = LPWDTrainingArguments(**common_args(tmp_path, weight_decay_mode="wd", lpwd_cautious=True,
                                                   weight_decay=0.5))
    assert LPWDTrainer(model=model, args=matching, optimizers=(unlike, None)).lpwd_optimizer is unlike


# ----------------------------------------------------------------------------------- a folder saved again
def test_a_folder_saved_again_gets_this_runs_card_and_record(tmp_path: Path) -> None:
    """A second run saving into the same folder replaces the card's LPWD section (before: the first run's
    stayed), and a config loaded from another run (2 blocks, layer-wise) reused uniformly on a 4-block model
    records this run's build, not the loaded record."""
    out = tmp_path / "final"
    first = LPWDTrainer(model=tiny_bert(), args=LPWDTrainingArguments(**common_args(
        tmp_path, weight_decay_mode="lpwd", weight_decay=0.3, max_steps=1)), train_dataset=TokenDataset(8))
    first.train()
    first.save_model(str(out))
    first.create_model_card()
    loaded = LPWDConfig.from_pretrained(out)
    assert loaded.depth_weight_decay == pytest.approx({"0": 0.075, "1": 0.15, "2": 0.225, "3": 0.3})
    reused = LPWDConfig(**{**loaded.settings(), "mode": "pwd", "layerwise": False})
    reused.record = loaded.record
    second = LPWDTrainer(model=tiny_bert(layers=4),
                         args=TrainingArguments(**common_args(tmp_path, max_steps=1)),
                         train_dataset=TokenDataset(8), lpwd_config=reused)
    second.train()
    second.save_model(str(out))
    saved = LPWDConfig.from_pretrained(out)
    assert (saved.mode, saved.depth_weight_decay, saved.num_blocks) == ("pwd", None, 4)
    assert saved.depth_shrink != loaded.depth_shrink
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and card.count("## Weight decay: LPWD") == 1
    assert "| weight decay mode | pwd |" in card and "| weight decay mode | lpwd |" not in card


def test_a_search_trial_resumes_with_its_own_settings(tmp_path: Path) -> None:
    """A hyperparameter search sets the trial's values after ``train()`` starts: the resume check reads them
    (before: the base arguments', so a trial resuming its own checkpoint, as Ray's PBT does, was refused, and
    one with another λ was let through to train with the checkpoint's λ)."""
    from transformers.trainer_utils import HPSearchBackend

    def trainer(steps: int) -> LPWDTrainer:
        args = LPWDTrainingArguments(**common_args(tmp_path, weight_decay_mode="lpwd", max_steps=steps,
                                                   save_strategy="steps", save_steps=2))
        searched = LPWDTrainer(model_init=lambda: tiny_bert(), args=args, train_dataset=TokenDataset(32))
        searched.hp_search_backend = HPSearchBackend.RAY  # as hyperparameter_search sets; a trial is a dict
        return searched

    trainer(2).train(trial={"weight_decay": 0.05})
    checkpoint = next((tmp_path / "out").rglob("checkpoint-2"))
    resumed = trainer(4)
    resumed.train(resume_from_checkpoint=str(checkpoint), trial={"weight_decay": 0.05})
    assert resumed.state.global_step == 4 and resumed.lpwd_config.weight_decay == 0.05
    with pytest.raises(ValueError, match=r"--weight_decay 0\.3 \(checkpoint: 0\.05\)"):
        trainer(4).train(resume_from_checkpoint=str(checkpoint), trial={"weight_decay": 0.3})


def test_the_last_norms_logged_are_those_of_the_weights_an_early_stop_returns(tmp_path: Path) -> None:
    """An early stop on a logging step: that step's log holds the weights with the next step's decay folded
    in; the settled weights are logged after it (before: the last log was one factor 1 − η·λ_0 off)."""
    from transformers import TrainerCallback

    class StopAtStep2(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 2

    torch.manual_seed(0)
    args = LPWDTrainingArguments(**common_args(tmp_path, weight_decay_mode="pwd", weight_decay=2.0,
                                               learning_rate=2e-2, lr_scheduler_type="constant", max_steps=8,
                                               logging_steps=2))
    trainer = LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(64),
                          callbacks=[StopAtStep2()])
    trainer.train()
    key = "lpwd/weight_norm/depth_00"
    logged = [entry for entry in trainer.state.log_history if key in entry]
    embeddings = [p for n, p in trainer.model.named_parameters() if n.startswith("bert.embeddings.")]
    returned = torch.cat([p.detach().flatten() for p in embeddings]).norm().item()
    assert logged[-1]["step"] == logged[-2]["step"] == 2
    assert logged[-1][key] == pytest.approx(returned, rel=1e-6)
    assert logged[-2][key] < logged[-1][key] * (1 - 1e-3)  # the step's log: the next decay folded in


# ----------------------------------------------------------------------------- checkpoints under legacy names
class _Images(torch.utils.data.Dataset):
    def __init__(self, size: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.pixels = torch.randn(size, 3, 8, 8, generator=gen)
        self.labels = torch.randint(0, 3, (size,), generator=gen)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixels[i], "labels": self.labels[i]}


def _tiny_vit():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32, num_labels=3)
    return ViTForImageClassification(config)


def test_a_vit_checkpoint_saved_under_legacy_names_resumes_and_loads_as_best_bitwise(tmp_path: Path) -> None:
    """transformers 5.25 saves ViT under its legacy names (``vit.encoder.layer.0...``) and its Trainer loads a
    checkpoint by the file's names: the encoder was not loaded, silently (a resumed run went on from the
    initial encoder; the "best" model mixed two checkpoints).  Resume is now bitwise the uninterrupted run,
    and the best model is the best checkpoint as ``from_pretrained`` reads it, bitwise."""
    from transformers import ViTForImageClassification

    def run(name: str, steps: int, resume: str | None = None, **extra) -> LPWDTrainer:
        args = LPWDTrainingArguments(**common_args(tmp_path, output_dir=str(tmp_path / name), max_steps=steps,
                                                   weight_decay_mode="lpwd", weight_decay=0.5,
                                                   lr_scheduler_type="constant", save_strategy="steps",
                                                   save_steps=2, **extra))
        trainer = LPWDTrainer(model=_tiny_vit(), args=args, train_dataset=_Images(32),
                              eval_dataset=_Images(8, seed=1))
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    whole = run("whole", 4).model.state_dict()
    resumed = run("whole", 4, resume=str(tmp_path / "whole" / "checkpoint-2")).model.state_dict()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    best = run("best", 4, eval_strategy="steps", eval_steps=2, load_best_model_at_end=True,
               metric_for_best_model="eval_loss", greater_is_better=True)  # the worse loss: not the last
    assert best.state.best_model_checkpoint.endswith("checkpoint-2")
    saved = ViTForImageClassification.from_pretrained(best.state.best_model_checkpoint).state_dict()
    final = best.model.state_dict()
    assert all(torch.equal(saved[k], final[k]) for k in saved)


def test_a_mixture_of_experts_checkpoint_resumes_bitwise(tmp_path: Path) -> None:
    """Mixtral's experts are fused in transformers 5 and saved under the per-expert legacy names: the stock
    Trainer's resume leaves them at their initial values (its resumed run differs from the uninterrupted
    one); through ``from_pretrained``'s conversion the resumed LPWD run is bitwise the uninterrupted one."""
    from transformers import MixtralConfig, MixtralForCausalLM

    def run(resume: str | None = None) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = MixtralForCausalLM(MixtralConfig(
            vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64))
        args = LPWDTrainingArguments(**common_args(
            tmp_path, max_steps=4, weight_decay_mode="lpwd", weight_decay=0.5, learning_rate=1e-2,
            save_strategy="steps", save_steps=2))
        trainer = LPWDTrainer(model=model, args=args, train_dataset=TokenDataset(16, causal_lm=True))
        trainer.train(resume_from_checkpoint=resume)
        return trainer.model.state_dict()

    whole = run()
    resumed = run(str(tmp_path / "out" / "checkpoint-2"))
    assert any("experts" in k for k in whole)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_a_resume_at_another_lr_records_the_lr_and_lambda_the_checkpoint_goes_on_with(tmp_path: Path,
                                                                                       caplog) -> None:
    """The Trainer loads the checkpoint's optimizer and scheduler state: its lr and λ go on, whatever
    ``--learning_rate`` says. A timescale's λ and the recorded shrink must be those, not the new lr's."""
    import json

    def run(name: str, lr: float, resume: str | None = None) -> LPWDTrainer:
        args = LPWDTrainingArguments(**common_args(tmp_path / name, learning_rate=lr, max_steps=8,
                                                   weight_decay_mode="pwd", lpwd_decay_timescale=4.0,
                                                   save_strategy="steps", save_steps=4))
        trainer = LPWDTrainer(model=tiny_bert(layers=2), args=args, train_dataset=TokenDataset(32))
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    first = run("a", 0.01)
    with caplog.at_level("WARNING", logger="transformers.hf_lpwd"):
        resumed = run("b", 0.02, resume=str(tmp_path / "a" / "out" / "checkpoint-4"))
    lam = 1 / (0.01 * 4.0 * 8)  # 1/(η̄·τ·S_e): 32 samples / batch 4 = 8 steps per epoch, at the first lr
    for trainer in (first, resumed):
        assert {g["weight_decay"] for g in trainer.lpwd_optimizer.param_groups if g["weight_decay"]} == {lam}
        assert trainer.lr_scheduler.base_lrs[0] == 0.01
    saved = {n: json.loads((tmp_path / n / "out" / "checkpoint-8" / "lpwd_config.json").read_text())
             for n in ("a", "b")}
    assert saved["b"]["weight_decay"] == lam
    assert saved["b"]["shrink"] == saved["a"]["shrink"]
    assert saved["b"]["base_optimizer_kwargs"]["lr"] == 0.01
    assert "not --learning_rate 0.02" in caplog.text and "not the 1.5625" in caplog.text


def test_an_evaluation_only_save_keeps_the_training_runs_record_and_card(tmp_path: Path) -> None:
    """A Trainer that never built an optimizer (``evaluate()``, then ``save_model``) trained nothing: it
    writes no ``lpwd_config.json`` or card section of its own, and a folder it saves into keeps the record of
    the run that trained it (before: λ = 0 and an empty record replaced λ = 0.1 and its shrink, and the card
    said so)."""
    from transformers import BertForSequenceClassification

    folder = tmp_path / "model"
    run = LPWDTrainer(model=tiny_bert(), train_dataset=TokenDataset(8), args=LPWDTrainingArguments(
        **common_args(tmp_path / "a", weight_decay_mode="lpwd", weight_decay=0.1, max_steps=2)))
    run.train()
    run.save_model(str(folder))
    record, card = (folder / "lpwd_config.json").read_text(), (folder / "README.md").read_text()
    assert LPWDConfig.from_pretrained(folder).shrink is not None
    evaluator = LPWDTrainer(model=BertForSequenceClassification.from_pretrained(folder),
                            args=LPWDTrainingArguments(**common_args(tmp_path / "b")),
                            eval_dataset=TokenDataset(8))
    evaluator.evaluate()
    evaluator.save_model(str(folder))
    assert (folder / "lpwd_config.json").read_text() == record and (folder / "README.md").read_text() == card
    untrained = tmp_path / "untrained"
    evaluator.save_model(str(untrained))
    evaluator.create_model_card()
    assert not (untrained / "lpwd_config.json").exists() and not (untrained / "README.md").exists()
    assert "Weight decay: LPWD" not in (tmp_path / "b" / "out" / "README.md").read_text()


@pytest.mark.parametrize("release", ["0_2_0", "0_5_0"])
def test_a_card_saved_again_keeps_what_its_author_wrote_under_the_section(tmp_path: Path,
                                                                          release: str) -> None:
    """An earlier release's card (the fixture's), with an author's ``###`` notes after the LPWD section and
    a section of their own after that: a re-save replaces the LPWD section only (before: up to the next
    ``##``, the notes went with it)."""
    from hf_lpwd.trainer.card import add_card_section

    card = tmp_path / "README.md"
    saved = (ROOT / "tests" / "data" / f"checkpoint_v{release}" / "checkpoint-3" / "README.md").read_text()
    notes = "\n### Notes\n\nTrained on my laptop; see the eval below.\n\n## Evaluation\n\n| acc | 0.9 |\n"
    card.write_text(saved.rstrip("\n") + "\n" + notes, encoding="utf-8")
    add_card_section(str(tmp_path), LPWDConfig(mode="pwd", weight_decay=0.7))
    text = card.read_text(encoding="utf-8")
    assert text.count("## Weight decay: LPWD") == 1 and "| λ (weight_decay) | 0.7 |" in text
    assert text.endswith("The full settings are in `lpwd_config.json`.\n" + notes)
    assert text.startswith(saved[:saved.index("## Weight decay: LPWD")])
