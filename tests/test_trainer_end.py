"""How an LPWDTrainer run ends: the last step, early stopping, ``load_best_model_at_end``; and that wd mode
adds nothing to the stock Trainer's callbacks.

pwd keeps θ'_{t+1} = (1 − η_{t+1}·λ)·θ_t as the model's weights between steps (the next step's decay is folded
into this step's AdamW call).  Three ways to end a run, three requirements:

* the run reaches ``max_steps``: the last step folds nothing, so the final weights are unfolded pwd's θ_T and
  the checkpoint written at that step holds the same weights, bit for bit;
* early stopping, no ``load_best_model_at_end``: the decay folded in for the step that never came is divided
  out, the final weights are θ_T again;
* early stopping with ``load_best_model_at_end``: the final model is the best checkpoint's weights, bit for
  bit (the weights its metric was computed on), and no decay is left pending in the optimizer.

Toward θ₀ (``--lpwd_decay_target init``) the early stop divides the factor out of θ − θ₀ (against the same
reference decaying toward θ₀, in float32: see the test), and after ``load_best_model_at_end`` the optimizer's
θ₀ is still the weights training started from, bit for bit (the best checkpoint is loaded into the
parameters, not into θ₀).

The schedule is ``constant`` (η > 0 at the last step): with the usual schedules whose lr reaches 0 at
``max_steps`` the extra factor is 1 and every one of these checks would pass with the end of the run broken.
η·λ = 0.04, so one factor too many or too few is a 4 % error; the reference is unfolded pwd written here
independently of LPWD (float64 AdamW with λ = 0, the decay applied before each step's forward), so float32
rounding is all that separates the two.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments, set_seed

from hf_lpwd import LPWDTrainer, LPWDTrainingArguments
from tests.tiny import TokenDataset, tiny_bert, tiny_llama

LR, LAM = 2e-2, 2.0  # η·λ = 0.04 per step
NUM_BLOCKS = 2
REL_TOL = 1e-4  # float32 against float64, ≤ 8 steps: observed ≤ 4.1e-6 of a tensor's norm; one factor is 4e-2


def run_args(tmp_path: Path, name: str, **overrides) -> dict:
    args = dict(
        output_dir=str(tmp_path / name), per_device_train_batch_size=4, learning_rate=LR, weight_decay=LAM,
        lr_scheduler_type="constant", max_steps=8, report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
        data_seed=0, logging_steps=1, dataloader_num_workers=0, eval_strategy="steps", eval_steps=1,
        save_strategy="steps", save_steps=1, metric_for_best_model="eval_loss", save_only_model=True,
    )
    args.update(overrides)
    return args


def early_stopping() -> EarlyStoppingCallback:
    """Stops after the 2nd evaluation whatever the losses: no later loss improves on the first by 1e9."""
    return EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=1e9)


def data() -> dict:
    return {"train_dataset": TokenDataset(64, causal_lm=True),
            "eval_dataset": TokenDataset(8, seed=1, causal_lm=True)}


def lpwd_lambda(name: str, mode: str) -> float:
    """λ of a decayed Llama parameter, by hand: pwd one λ; lpwd λ·(d+1)/(N+2) with d = 0 embeddings, 1..N
    blocks, N+1 the head."""
    if mode == "pwd":
        return LAM
    if name.startswith("model.embed_tokens."):
        depth = 0
    elif name.startswith("lm_head."):
        depth = NUM_BLOCKS + 1
    else:
        depth = int(name.split(".layers.")[1].split(".")[0]) + 1
    return LAM * (depth + 1) / (NUM_BLOCKS + 2)


class _DecayBeforeEachStep(TrainerCallback):
    """Unfolded pwd on the stock Trainer: θ ← (1 − η_t·λ)·θ on the decayed parameters before step t's
    forward; toward θ₀ (``toward_init``) θ ← θ₀ + (1 − η_t·λ)·(θ − θ₀), θ₀ the weights training starts
    from."""

    def __init__(self, model: torch.nn.Module, mode: str, toward_init: bool = False) -> None:
        decayed = set(Trainer.get_decay_parameter_names(None, model))
        self.params = [(p, lpwd_lambda(n, mode), p.detach().clone() if toward_init else None)
                       for n, p in model.named_parameters() if n in decayed]

    @torch.no_grad()
    def on_step_begin(self, args, state, control, lr_scheduler=None, **kwargs) -> None:
        eta = lr_scheduler.get_last_lr()[0]
        for param, lam, start in self.params:
            if start is None:
                param.mul_(1.0 - eta * lam)
            else:
                param.sub_(start).mul_(1.0 - eta * lam).add_(start)


def float64_unfolded_pwd(tmp_path: Path, mode: str, callbacks: list, toward_init: bool = False,
                         dtype: torch.dtype = torch.float64, **overrides) -> dict[str, torch.Tensor]:
    set_seed(0)
    model = tiny_llama().to(dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, foreach=False)
    args = TrainingArguments(**run_args(tmp_path, "reference", **overrides))
    trainer = Trainer(model=model, args=args, optimizers=(opt, None),
                      callbacks=[_DecayBeforeEachStep(model, mode, toward_init), *callbacks], **data())
    trainer.train()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def lpwd_run(tmp_path: Path, mode: str, callbacks: list, target: str = "zero", **overrides) -> LPWDTrainer:
    set_seed(0)
    args = LPWDTrainingArguments(**run_args(tmp_path, "lpwd", **overrides), weight_decay_mode=mode,
                                 lpwd_decay_target=target)
    trainer = LPWDTrainer(model=tiny_llama(), args=args, callbacks=callbacks, **data())
    trainer.train()
    return trainer


def assert_matches_reference(model: torch.nn.Module, ref: dict[str, torch.Tensor]) -> None:
    got = dict(model.named_parameters())
    assert got.keys() == ref.keys()
    for name, tensor in ref.items():
        rel = ((got[name].detach().double() - tensor).norm() / tensor.norm()).item()
        assert rel <= REL_TOL, (name, rel)


def checkpoint_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def assert_no_decay_pending(trainer: LPWDTrainer) -> None:
    lpwd = trainer.lpwd_optimizer
    assert [g["lpwd_applied_decay"] for g in lpwd.param_groups] == [None] * len(lpwd.param_groups)
    assert not lpwd.pre_step_pending


@pytest.mark.parametrize("mode", ["pwd", "lpwd"])
def test_a_run_to_max_steps_ends_at_unfolded_pwd_and_its_last_checkpoint(tmp_path: Path, mode: str) -> None:
    """η > 0 at the last step: it must fold nothing (the Trainer tells LPWD max_steps), so the checkpoint
    written at that step and the final model are the same weights, unfolded pwd's θ_T."""
    trainer = lpwd_run(tmp_path, mode, [], max_steps=4, eval_strategy="no", save_steps=4)
    assert_matches_reference(trainer.model, float64_unfolded_pwd(tmp_path, mode, [], max_steps=4,
                                                                 eval_strategy="no", save_steps=4))
    saved = checkpoint_weights(Path(trainer.args.output_dir) / "checkpoint-4")
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert_no_decay_pending(trainer)


@pytest.mark.parametrize("target", ["zero", "init"])
@pytest.mark.parametrize("mode", ["pwd", "lpwd"])
def test_early_stopping_ends_at_unfolded_pwd(tmp_path: Path, mode: str, target: str) -> None:
    """Stopped at step 2 of 8: the decay folded in for step 3 is divided out; toward θ₀ (target init) in the
    coordinates θ − θ₀, θ₀ + (θ − θ₀)/(1 − ηλ) (dividing θ itself would leave 4 % of θ₀ in the weights)."""
    trainer = lpwd_run(tmp_path, mode, [early_stopping()], target)
    assert trainer.state.global_step == 2
    toward_init = target == "init"
    # toward θ₀ the reference runs in float32: in float64 one element of 512 (layers.1.mlp.up_proj) ends
    # 1.9e-4 away, its step-1 gradient (1e-5, a difference of larger terms) 3 % off in float32, which Adam
    # passes on at full size; the float32 reference (stock AdamW, the decay by this callback) is 1.6e-7 away.
    dtype = torch.float32 if toward_init else torch.float64
    reference = float64_unfolded_pwd(tmp_path, mode, [early_stopping()], toward_init, dtype)
    assert_matches_reference(trainer.model, reference)
    assert_no_decay_pending(trainer)
    if toward_init:  # the target mattered: the reference toward 0 is far outside the tolerance
        with pytest.raises(AssertionError):
            assert_matches_reference(trainer.model, float64_unfolded_pwd(tmp_path, mode, [early_stopping()]))


@pytest.mark.parametrize("mode", ["pwd", "lpwd"])
def test_early_stopping_with_load_best_model_is_the_best_checkpoint_bit_for_bit(tmp_path: Path,
                                                                                mode: str) -> None:
    """The Trainer loads the best checkpoint before on_train_end; those weights (θ' of that step, what its
    eval_loss was computed on) are the final model as saved. Patience 2, and the *highest* eval_loss counts as
    best: the losses fall here, so the best checkpoint is step 1's, not the last one."""
    stopper = EarlyStoppingCallback(early_stopping_patience=2, early_stopping_threshold=1e9)
    trainer = lpwd_run(tmp_path, mode, [stopper], load_best_model_at_end=True, greater_is_better=True)
    out = Path(trainer.args.output_dir)
    assert trainer.state.global_step == 3
    best = Path(trainer.state.best_model_checkpoint)
    saved = checkpoint_weights(best)
    final = trainer.model.state_dict()
    assert saved.keys() <= final.keys()
    for name, tensor in saved.items():
        assert torch.equal(final[name], tensor), name
    last = checkpoint_weights(out / "checkpoint-3")
    assert best == out / "checkpoint-1" and any(not torch.equal(last[n], saved[n]) for n in saved)
    assert_no_decay_pending(trainer)


def test_load_best_model_toward_init_keeps_the_pretrained_theta0(tmp_path: Path) -> None:
    """Target init with ``load_best_model_at_end``: the best checkpoint's weights are loaded into the model's
    parameters (in place), and θ₀ held by the optimizer stays the weights training started from, bit for bit
    (not the best checkpoint's, nor the last step's); the final model is the best checkpoint as saved."""
    set_seed(0)
    pretrained = {n: p.detach().clone() for n, p in tiny_llama().named_parameters()}
    stopper = EarlyStoppingCallback(early_stopping_patience=2, early_stopping_threshold=1e9)
    trainer = lpwd_run(tmp_path, "lpwd", [stopper], "init", load_best_model_at_end=True,
                       greater_is_better=True)
    best = Path(trainer.state.best_model_checkpoint)
    assert trainer.state.global_step == 3 and best.name == "checkpoint-1"
    saved = checkpoint_weights(best)
    named = dict(trainer.model.named_parameters())
    for name, tensor in saved.items():
        assert torch.equal(named[name].detach(), tensor), name
    theta0 = trainer.lpwd_optimizer.initial_weights
    decayed = set(trainer.get_decay_parameter_names(trainer.model))
    assert {id(p) for p in theta0} == {id(named[n]) for n in decayed}
    for name in decayed:
        assert torch.equal(theta0[named[name]], pretrained[name]), name
        assert not torch.equal(theta0[named[name]], named[name].detach()), name  # the best weights moved
    assert_no_decay_pending(trainer)


@pytest.mark.parametrize("mode", ["wd", "rwd", "pwd", "lpwd"])
def test_the_callbacks_are_the_stock_trainers(tmp_path: Path, mode: str) -> None:
    """LPWD adds no callback in any mode (the end of a pwd run is handled in train()), with or without user
    ones."""
    for user in ([], [early_stopping()]):
        kwargs = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none", weight_decay=0.1)
        stock = Trainer(model=tiny_bert(), args=TrainingArguments(**kwargs), callbacks=list(user))
        ours = LPWDTrainer(model=tiny_bert(), args=LPWDTrainingArguments(**kwargs, weight_decay_mode=mode),
                           callbacks=list(user))
        assert [type(cb) for cb in ours.callback_handler.callbacks] == [type(cb) for cb in
                                                                        stock.callback_handler.callbacks]
        assert ours.callback_handler.callback_list == stock.callback_handler.callback_list
