"""The run's shrink S_d = Σ_t d_t per depth: a float64 sum of the schedule, in the table, the CLI and the
warning."""

from __future__ import annotations

import json

import pytest

from hf_lpwd.cli import main
from hf_lpwd.groups import format_layer_table, group_shrink, layer_table, shrink_warning
from hf_lpwd.schedule import trainer_schedule_scales


def linear_warmup(t: int, warmup: int, total: int) -> float:
    """transformers' linear schedule with warm-up, written out."""
    return t / warmup if t < warmup else max(0.0, (total - t) / (total - warmup))


@pytest.mark.parametrize("coupling", ["coupled", "independent", "corrected"])
def test_group_shrink_is_the_float64_sum_of_the_schedule(coupling: str) -> None:
    base_lr, lam, total, warmup = 2e-3, 30.0, 100, 10
    scales = trainer_schedule_scales("linear", total, warmup)
    assert scales == pytest.approx([linear_warmup(t, warmup, total) for t in range(total)], abs=1e-12)
    lrs = [base_lr * linear_warmup(t, warmup, total) for t in range(total)]
    expected = {
        "coupled": sum(eta * lam for eta in lrs),
        "independent": sum(eta / base_lr * lam for eta in lrs),
        "corrected": sum(eta**2 / base_lr * lam for eta in lrs),
    }[coupling]
    assert group_shrink(lam, base_lr, scales, coupling) == pytest.approx(expected, rel=1e-12)
    # warm-up triangle 4.5 + linear decay 45.5: Σ s_t = 50 exactly
    assert sum(scales) == pytest.approx(50.0, rel=1e-12)


def test_the_table_has_a_shrink_column_and_warns_above_one() -> None:
    groups = [
        {"params": [], "weight_decay": 0.5, "depth": 0, "lpwd_multiplier": 0.5},
        {"params": [], "weight_decay": 0.0, "depth": 0, "lpwd_multiplier": 0.0},
        {"params": [], "weight_decay": 1.0, "depth": 1, "lpwd_multiplier": 1.0},
    ]
    rows = layer_table(groups, shrink=[0.4, 0.0, 1.6])
    assert [(r["depth"], r["shrink"]) for r in rows] == [(0, 0.4), (1, 1.6)]
    text = format_layer_table(rows)
    assert text.splitlines()[0].split()[:7] == ["depth", "tensors", "parameters", "lr_mult", "λ_mult",
                                              "weight_decay", "shrink"]
    assert [line.split()[6] for line in text.splitlines()[1:]] == ["0.4", "1.6"]
    warning = shrink_warning(rows)
    assert "shrink" in warning and "depth 1: S = 1.6" in warning and "depth 0" not in warning
    assert "--weight_decay" in warning and "--lpwd_decay_timescale" in warning
    assert shrink_warning(layer_table(groups, shrink=[0.4, 0.0, 0.9])) is None


def test_inspect_shows_the_shrink_column_for_a_run(tmp_path, capsys) -> None:
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 50,
              "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(config))
    code = main(["inspect", str(tmp_path), "--weight-decay", "24", "--learning-rate", "2e-3",
                 "--max-steps", "100", "--warmup-steps", "10"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("depth"))
    shrink = [float(line.split()[6]) for line in lines[start + 1:start + 5]]
    # S_d = η·λ·(d+1)/(N+2)·Σ s_t = 2e-3 · 24 · (d+1)/4 · 50: 0.6, 1.2, 1.8, 2.4
    assert shrink == pytest.approx([2e-3 * 24 * (d + 1) / 4 * 50 for d in range(4)], rel=1e-3)
    warned = out.split("shrink S > 1")[1]
    assert "depth 1: S = 1.2" in warned and "depth 0" not in warned
    assert main(["inspect", str(tmp_path), "--learning-rate", "1e-3"]) == 2
    assert "needs both --learning-rate and --max-steps" in capsys.readouterr().err
