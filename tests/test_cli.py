"""The ``hf-lpwd inspect`` command on a tiny local config (built on the meta device, offline)."""

from __future__ import annotations

import json

import pytest

from hf_lpwd.cli import main

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 50,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "tie_word_embeddings": False,
}
# depth, tensors, parameters, lr multiplier, λ multiplier, weight decay, first example (λ = 0.1, N = 2 blocks,
# 4 depth levels: λ·(d+1)/(N+2)); embed_tokens is 50 × 16 = 800 parameters, the head 800 + the final norm 16
EXPECTED_ROWS = [
    ["0", "1", "800", "1", "0.2500", "0.025", "model.embed_tokens.weight"],
    ["1", "9", "2,336", "1", "0.5000", "0.05", "model.layers.0.self_attn.q_proj.weight,"],
    ["2", "9", "2,336", "1", "0.7500", "0.075", "model.layers.1.self_attn.q_proj.weight,"],
    ["3", "2", "816", "1", "1.0000", "0.1", "lm_head.weight,"],
]


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    return tmp_path


def _rows(out: str) -> list[list[str]]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["depth"])
    rows = []
    for line in lines[start + 1 :]:
        if not line.split() or not (line.split()[0].isdigit() or line.split()[0] == "None"):
            break
        rows.append(line.split()[:7])
    return rows


def test_inspect_directory(model_dir, capsys):
    assert main(["inspect", str(model_dir), "--weight-decay", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "LlamaForCausalLM" in out
    assert "blocks: 2, depth levels: 4" in out
    assert _rows(out) == EXPECTED_ROWS


def test_inspect_config_file_and_pattern(model_dir, capsys):
    args = ["inspect", "--config", str(model_dir / "config.json"), "--weight-decay", "0.1",
            "--layer-pattern", r"\.layers\.(\d+)\."]
    assert main(args) == 0
    assert _rows(capsys.readouterr().out) == EXPECTED_ROWS


def test_inspect_layer_lr_decay(model_dir, capsys):
    """lr multiplier γ^(N+1−d): γ = 0.5, N = 2 → 0.125, 0.25, 0.5, 1 (the head keeps the full lr); λ unchanged."""
    assert main(["inspect", str(model_dir), "--weight-decay", "0.1", "--layer-lr-decay", "0.5"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert [row[3] for row in rows] == ["0.125", "0.25", "0.5", "1"]
    assert [row[:3] + row[4:] for row in rows] == [row[:3] + row[4:] for row in EXPECTED_ROWS]


def test_inspect_uniform(model_dir, capsys):
    """--uniform: one λ for every parameter, one row holding all 21 tensors and 6,288 parameters."""
    assert main(["inspect", str(model_dir), "--weight-decay", "0.1", "--uniform"]) == 0
    out = capsys.readouterr().out
    assert "weight decay: 0.1 (uniform)" in out
    assert [row[1:6] for row in _rows(out)] == [["21", "6,288", "1", "1.0000", "0.1"]]


@pytest.mark.parametrize(("tied_depth", "depth"), [("input", "0"), ("output", "3")])
def test_inspect_tied_embeddings(model_dir, capsys, tied_depth, depth):
    """A tied embedding/head matrix is one tensor at depth 0 (input) or N+1 (output), named in a 'tied:' line."""
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps(dict(config, tie_word_embeddings=True)))
    assert main(["inspect", str(model_dir), "--weight-decay", "0.1", "--tied-depth", tied_depth]) == 0
    out = capsys.readouterr().out
    assert f"tied: lm_head.weight = model.embed_tokens.weight (depth {depth})" in out
    rows = {row[0]: row for row in _rows(out)}
    if tied_depth == "input":
        assert sorted(rows) == ["0", "1", "2", "3"]
        assert rows["0"][1:6] == ["1", "800", "1", "0.2500", "0.025"]
        assert rows["3"][1:3] == ["1", "16"]  # the final norm only (not decayed)
    else:
        assert sorted(rows) == ["1", "2", "3"]  # nothing left at depth 0
        assert rows["3"][1:7] == ["2", "816", "1", "1.0000", "0.1", "model.embed_tokens.weight,"]


def plotted_lines(monkeypatch) -> list[dict[str, tuple[list[float], list[float]]]]:
    """Every figure saved from now on, as {line label: (x data, y data)}, read from the figure's own axes."""
    from matplotlib.figure import Figure

    figures: list[dict[str, tuple[list[float], list[float]]]] = []
    savefig = Figure.savefig

    def recording_savefig(self, *args, **kwargs):
        figures.append({line.get_label(): ([float(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()])
                        for axes in self.axes for line in axes.get_lines()})
        return savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording_savefig)
    return figures


def test_inspect_plot_draws_both_profiles(model_dir, tmp_path, capsys, monkeypatch):
    """The PNG holds two step lines against depth: λ·(d+1)/(N+2) and γ^(N+1−d) (λ = 0.1, γ = 0.5, N = 2)."""
    figures = plotted_lines(monkeypatch)
    target = tmp_path / "profile.png"
    args = ["inspect", str(model_dir), "--weight-decay", "0.1", "--layer-lr-decay", "0.5", "--plot", str(target)]
    assert main(args) == 0
    assert f"plot written to {target}" in capsys.readouterr().out
    (lines,) = figures
    assert sorted(lines) == ["lr multiplier", "weight decay λ_d"]
    depths, lam = lines["weight decay λ_d"]
    assert depths == [0, 1, 2, 3]
    assert lam == pytest.approx([0.1 * (d + 1) / 4 for d in depths], rel=1e-12)
    assert lines["lr multiplier"] == (depths, pytest.approx([0.5 ** (3 - d) for d in depths], rel=1e-12))
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 100 and height > 100


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d: ["inspect", str(d / "missing")], "no such file or directory"),
        (lambda d: ["inspect", "--config", str(d / "missing.json")], "no such file or directory"),
        (lambda d: ["inspect", str(d / "empty")], "has no config.json"),
        (lambda d: ["inspect", str(d / "broken")], "could not load a config"),
        (lambda d: ["inspect", str(d), "--layer-pattern", "(\\d+"], "layer_pattern"),
        (lambda d: ["inspect"], "give a model directory"),
    ],
)
def test_errors_exit_2_without_traceback(model_dir, capsys, make_args, message):
    (model_dir / "empty").mkdir()
    (model_dir / "broken").mkdir()
    (model_dir / "broken" / "config.json").write_text("{not json")
    assert main(make_args(model_dir)) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_unknown_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
