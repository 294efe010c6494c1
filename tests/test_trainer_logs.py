"""The per-depth weight norms reach the logs at the first and the last step, whatever ``logging_steps`` is.

``hf-lpwd compare``'s norm ratio reads the first and last logged norms; with ``logging_steps`` (default 500)
above ``max_steps`` they used to be missing.  Expected values are computed here from the model's parameters by
hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hf_lpwd import LPWDTrainer, LPWDTrainingArguments
from hf_lpwd.names import NORM_LOG_PREFIX
from tests.tiny import TokenDataset, common_args, tiny_bert


def _depth(name: str) -> int:
    """tiny_bert(layers=2) by hand: embeddings 0, encoder layer i → i+1, pooler and classifier 3."""
    if name.startswith("bert.embeddings."):
        return 0
    if name.startswith("bert.encoder.layer."):
        return int(name.split(".")[3]) + 1
    return 3


def _norms(model: torch.nn.Module) -> dict[str, float]:
    squares: dict[int, float] = {}
    for name, param in model.named_parameters():
        squares[_depth(name)] = squares.get(_depth(name), 0.0) + float(param.detach().double().square().sum())
    return {f"{NORM_LOG_PREFIX}{d:02d}": v ** 0.5 for d, v in sorted(squares.items())}


@pytest.mark.parametrize("logging_steps,logged_at", [(500, [0, 3]), (3, [0, 3]), (2, [0, 2, 3])])
def test_norms_are_logged_at_the_first_and_last_step(tmp_path: Path, logging_steps: int,
                                                     logged_at: list[int]) -> None:
    torch.manual_seed(0)
    model = tiny_bert()
    start = _norms(model)
    args = LPWDTrainingArguments(**common_args(tmp_path, max_steps=3, logging_steps=logging_steps,
                                               weight_decay=0.5, learning_rate=5e-2))
    trainer = LPWDTrainer(model=model, args=args, train_dataset=TokenDataset(16))
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if any(k.startswith(NORM_LOG_PREFIX) for k in entry)]
    assert [entry["step"] for entry in logs] == logged_at
    first = {k: v for k, v in logs[0].items() if k.startswith(NORM_LOG_PREFIX)}
    last = {k: v for k, v in logs[-1].items() if k.startswith(NORM_LOG_PREFIX)}
    assert first == pytest.approx(start, abs=1e-6)
    assert last == pytest.approx(_norms(model), abs=1e-6)
    assert last != pytest.approx(first, abs=1e-4)  # the decay moved them


def test_no_norms_when_switched_off(tmp_path: Path) -> None:
    args = LPWDTrainingArguments(**common_args(tmp_path, max_steps=2, logging_steps=500),
                                 lpwd_log_layer_norms=False)
    trainer = LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(8))
    trainer.train()
    assert not [e for e in trainer.state.log_history if any(k.startswith(NORM_LOG_PREFIX) for k in e)]


@pytest.mark.parametrize("rounding,path", [
    (True, "bf16 weights: update + decay stochastically rounded"),
    (False, "bf16 weights: rounded to nearest (stochastic_rounding=False)"),
])
def test_the_layer_table_names_the_weights_dtype_and_path(tmp_path: Path, caplog, rounding: bool,
                                                          path: str) -> None:
    import transformers

    transformers.logging.set_verbosity_info()
    transformers.logging.enable_propagation()
    try:
        args = LPWDTrainingArguments(**common_args(tmp_path, max_steps=1, weight_decay=0.1),
                                     lpwd_stochastic_rounding=rounding, optim="adamw_torch")
        with caplog.at_level("INFO"):
            model = tiny_bert().to(torch.bfloat16)
            LPWDTrainer(model=model, args=args, train_dataset=TokenDataset(8)).train()
    finally:
        transformers.logging.set_verbosity_warning()
        transformers.logging.disable_propagation()
    (table,) = {r.getMessage() for r in caplog.records if r.getMessage().startswith("LPWD mode=")}
    lines = table.splitlines()
    assert "weights dtype: bfloat16" in lines
    assert f"weights: {path} (depths 0, 1, 2, 3)" in lines


def test_distance_to_init_per_depth_is_logged_when_asked(tmp_path: Path) -> None:
    """``--lpwd_log_distance_to_init``: ‖θ_d − θ₀_d‖₂ beside the norms, 0 at the start, by hand at the end."""
    from hf_lpwd.names import DISTANCE_LOG_PREFIX

    torch.manual_seed(0)
    model = tiny_bert()
    start = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    args = LPWDTrainingArguments(**common_args(tmp_path, max_steps=3, logging_steps=500, weight_decay=0.5,
                                               learning_rate=5e-2), lpwd_log_distance_to_init=True)
    trainer = LPWDTrainer(model=model, args=args, train_dataset=TokenDataset(16))
    trainer.train()
    squares: dict[int, float] = {}
    for name, param in model.named_parameters():
        squares[_depth(name)] = squares.get(_depth(name), 0.0) + float(
            (param.detach().double() - start[name]).square().sum())
    expected = {f"{DISTANCE_LOG_PREFIX}{d:02d}": v ** 0.5 for d, v in sorted(squares.items())}
    history = [e for e in trainer.state.log_history if any(k.startswith(DISTANCE_LOG_PREFIX) for k in e)]
    assert [e["step"] for e in history] == [0, 3]
    assert all(v == 0.0 for k, v in history[0].items() if k.startswith(DISTANCE_LOG_PREFIX))
    last = {k: v for k, v in history[-1].items() if k.startswith(DISTANCE_LOG_PREFIX)}
    assert last == pytest.approx(expected, abs=1e-5) and min(last.values()) > 0


def test_distance_to_init_after_a_resume_measures_from_the_first_runs_start(tmp_path: Path) -> None:
    """A resumed run logs ‖θ − θ₀‖ from the weights the run started from (the model before the checkpoint is
    loaded), equal to the uninterrupted run's; before, θ₀ was the checkpoint's weights and the distance
    restarted near 0 at every resume."""
    from hf_lpwd.names import DISTANCE_LOG_PREFIX

    def run(resume: str | None) -> dict[str, float]:
        torch.manual_seed(0)
        args = LPWDTrainingArguments(**common_args(tmp_path, max_steps=4, logging_steps=500, weight_decay=0.5,
                                                   learning_rate=5e-2, save_strategy="steps", save_steps=2),
                                     lpwd_log_distance_to_init=True)
        trainer = LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(16))
        trainer.train(resume_from_checkpoint=resume)
        (last,) = [e for e in trainer.state.log_history if e.get("step") == 4 and
                   any(k.startswith(DISTANCE_LOG_PREFIX) for k in e)]
        return {k: v for k, v in last.items() if k.startswith(DISTANCE_LOG_PREFIX)}

    uninterrupted = run(None)
    resumed = run(str(tmp_path / "out" / "checkpoint-2"))
    assert resumed == uninterrupted and min(resumed.values()) > 0
