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
# depth, tensors, parameters, multiplier, weight decay, first example (λ = 0.1, n = 4 levels)
EXPECTED_ROWS = [
    ["0", "1", "800", "0.2500", "0.025", "model.embed_tokens.weight"],
    ["1", "9", "2,336", "0.5000", "0.05", "model.layers.0.self_attn.q_proj.weight,"],
    ["2", "9", "2,336", "0.7500", "0.075", "model.layers.1.self_attn.q_proj.weight,"],
    ["3", "2", "816", "1.0000", "0.1", "lm_head.weight,"],
]


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    return tmp_path


def _rows(out: str) -> list[list[str]]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["depth"])
    return [line.split()[:6] for line in lines[start + 1 :]]


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
