"""``hf-lpwd inspect`` with the λ / lr profiles: the table's columns and the ``--plot`` file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_lpwd.cli import main


def _llama_config(tmp_path: Path, tied: bool) -> Path:
    cfg = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 64,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "tie_word_embeddings": tied,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path


def test_table_shows_lr_multiplier_and_lambda_side_by_side(tmp_path: Path, capsys) -> None:
    config = _llama_config(tmp_path, tied=True)
    assert main(["inspect", "--config", str(config), "--weight-decay", "0.5", "--layer-lr-decay", "0.5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "layer lr decay: 0.5" in out[1]
    assert out[2] == "tensors, parameters: decayed/all (biases and norm weights get no decay)"
    header = out[3].split()
    assert header[:6] == ["depth", "tensors", "parameters", "lr_mult", "λ_mult", "weight_decay"]
    rows = [line.split() for line in out[4:9]]
    # N = 3 blocks: lr γ^(4−d) = 1/16, 1/8, 1/4, 1/2, 1; λ·(d+1)/5 = 0.1, 0.2, 0.3, 0.4; the head row holds
    # the final norm (not decayed): the tied head matrix sits at depth 0 by default.
    assert [(r[0], r[3], r[5]) for r in rows] == [
        ("0", "0.0625", "0.1"),
        ("1", "0.125", "0.2"),
        ("2", "0.25", "0.3"),
        ("3", "0.5", "0.4"),
        ("4", "1", "0"),
    ]
    assert out[9] == "tied: lm_head.weight = model.embed_tokens.weight (depth 0)"


@pytest.mark.parametrize(("tied_depth", "depths"), [("input", [0, 1, 2, 3, 4]), ("output", [1, 2, 3, 4])])
def test_plot_draws_a_png_of_the_tables_profiles(
    tmp_path: Path, capsys, monkeypatch, tied_depth: str, depths: list[int]
) -> None:
    """The plotted lines are the table's columns: the default λ = 0.01 as λ·(d+1)/5 and γ^(4−d), N = 3; a tied
    matrix at the output leaves depth 0 empty, so the lines start at depth 1."""
    from tests.test_cli import LAMBDA, LR_MULT, plotted_figures, steps

    figures = plotted_figures(monkeypatch)
    config = _llama_config(tmp_path, tied=True)
    target = tmp_path / "profile.png"
    assert (
        main(
            [
                "inspect",
                "--config",
                str(config),
                "--layer-lr-decay",
                "0.8",
                "--tied-depth",
                tied_depth,
                "--plot",
                str(target),
            ]
        )
        == 0
    )
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("profile")] == ["profile.png"]
    (figure,) = figures
    lines = figure["lines"]
    # tied at the input: depth 4 holds the final norm only (not decayed), λ 0 there
    lam = [0.01 * (d + 1) / 5 if d < 4 or tied_depth == "output" else 0.0 for d in depths]
    edges = [d - 0.5 for d in depths] + [depths[-1] + 0.5]
    assert lines[LAMBDA] == (edges, pytest.approx(steps(depths, lam)[1], rel=1e-12))
    assert lines[LR_MULT] == (
        edges,
        pytest.approx(steps(depths, [0.8 ** (4 - d) for d in depths])[1], rel=1e-12),
    )


def test_bad_plot_folder_and_bad_gamma_are_one_line_errors(tmp_path: Path, capsys) -> None:
    config = _llama_config(tmp_path, tied=False)
    assert main(["inspect", "--config", str(config), "--plot", str(tmp_path / "nope" / "x.png")]) == 2
    assert "--plot" in capsys.readouterr().err
    assert main(["inspect", "--config", str(config), "--layer-lr-decay", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-lpwd: error: --layer-lr-decay=1.5 must be in (0, 1]")
