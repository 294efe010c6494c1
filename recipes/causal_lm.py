"""Causal language modelling with LPWD: fine-tune an LLM (optionally with LoRA) or pretrain one from a config.

    # pretrain a tiny Llama on Tiny Shakespeare (byte-level tokenizer shipped in recipes/data)
    python recipes/causal_lm.py recipes/configs/tiny_llama_shakespeare.yaml
    # fine-tune a pretrained model with LoRA
    python recipes/causal_lm.py --model_name_or_path Qwen/Qwen2.5-0.5B --train_file corpus.txt \\
        --lora_r 16 --lora_target_modules q_proj,k_proj,v_proj,o_proj --block_size 512 \\
        --weight_decay_mode lpwd --weight_decay 0.1 --learning_rate 2e-4 --output_dir runs/qwen-lora
    accelerate launch --multi_gpu --num_processes 8 recipes/causal_lm.py ...

Text files (``.txt``: one example per line), JSON lines or CSV (``--text_column``), or a Hub dataset.
The texts are tokenized, concatenated and cut into blocks of ``--block_size`` tokens.  Evaluation
reports the loss and the perplexity on ``--validation_file``, or on the first
``--validation_split_percentage`` % of the training data.  The finished model (or LoRA adapter),
tokenizer, ``lpwd_config.json`` and ``all_results.json`` go to ``OUTPUT_DIR/final``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from recipe_utils import (
    RecipeError,
    check_best_metric,
    check_file,
    check_layers,
    default_train_eval,
    dtype_field,
    from_config_kwargs,
    load_pretrained,
    log_weights_dtype,
    parse_list,
    recipe_main,
    require_columns,
    resolve_config,
    resolve_model_path,
    run_main,
    torch_dtype,
    train_evaluate_save,
)

logger = logging.getLogger("hf_lpwd.recipes")

TEXT_EXTENSIONS = (".txt", ".text", ".raw", ".json", ".jsonl", ".csv")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Pretrained model (local folder or Hub id). Leave out to train from scratch."},
    )
    config_name: str | None = field(
        default=None,
        metadata={"help": "Config to train from scratch: a folder or a config.json (with model_type)."},
    )
    model_type: str | None = field(
        default=None,
        metadata={"help": "Train from scratch from this architecture's default config (e.g. llama)."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Override config values when training from scratch, e.g. "
            "'hidden_size=64,num_hidden_layers=2,num_attention_heads=4'."
        },
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "Tokenizer folder or Hub id, if not the model's own (needed from scratch)."},
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where downloaded models and datasets are cached."}
    )
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit)."})
    dtype: str = dtype_field()
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains all weights (no LoRA)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling α."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated module names to adapt (q_proj,v_proj), or all-linear; "
            "default: peft's choice for the architecture."
        },
    )


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": "A Hub dataset (e.g. Salesforce/wikitext)."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration."})
    train_file: str | None = field(
        default=None, metadata={"help": "Training text: .txt (lines), .json/.jsonl or .csv."}
    )
    validation_file: str | None = field(default=None, metadata={"help": "Evaluation text, same format."})
    validation_split_percentage: int = field(
        default=5,
        metadata={
            "help": "Without a validation file/split: this percentage of the training data (its start)."
        },
    )
    text_column: str = field(default="text", metadata={"help": "Column with the text (JSON/CSV/Hub data)."})
    block_size: int | None = field(
        default=None, metadata={"help": "Tokens per training block; default: min(1024, the model's context)."}
    )
    keep_linebreaks: bool = field(default=True, metadata={"help": "Keep the line breaks of .txt files."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training blocks."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N evaluation blocks."}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenization."}
    )
    overwrite_cache: bool = field(
        default=False, metadata={"help": "Re-tokenize even if a cached result exists."}
    )


# ---------------------------------------------------------------------------------------------- data
def _builder(path: str) -> tuple[str, dict[str, Any]]:
    if path.endswith((".json", ".jsonl")):
        return "json", {}
    if path.endswith(".csv"):
        return "csv", {}
    return "text", {}


def load_raw_datasets(data_args: DataArguments, cache_dir: str | None, need_validation: bool) -> Any:
    import datasets

    pct = data_args.validation_split_percentage
    if not 0 < pct < 100:
        raise RecipeError(f"--validation_split_percentage={pct} must be between 1 and 99")
    if data_args.dataset_name is not None:

        def load(split: str | None = None) -> Any:
            try:
                return datasets.load_dataset(
                    data_args.dataset_name, data_args.dataset_config_name, split=split, cache_dir=cache_dir
                )
            except Exception as exc:  # the Hub's errors are many; all mean the same to the user
                raise RecipeError(
                    f"--dataset_name={data_args.dataset_name} could not be loaded "
                    f"({type(exc).__name__}: {exc}). Without Hub access use --train_file/--validation_file."
                ) from None

        raw = load()
        if "validation" not in raw and need_validation:
            raw["validation"] = load(f"train[:{pct}%]")
            raw["train"] = load(f"train[{pct}%:]")
        return raw

    if data_args.train_file is None and data_args.validation_file is None:
        raise RecipeError("no data: pass --train_file (and --validation_file) or --dataset_name")
    files = {"train": data_args.train_file, "validation": data_args.validation_file}
    files = {split: path for split, path in files.items() if path is not None}
    for split, path in files.items():
        check_file(path, f"--{split}_file", TEXT_EXTENSIONS)
    builders = {_builder(path)[0] for path in files.values()}
    if len(builders) > 1:
        raise RecipeError("--train_file and --validation_file must have the same format")
    builder = builders.pop()
    kwargs: dict[str, Any] = {"cache_dir": cache_dir}
    if builder == "text":
        kwargs["keep_linebreaks"] = data_args.keep_linebreaks
    raw = datasets.load_dataset(builder, data_files=files, **kwargs)
    if "validation" not in raw and need_validation:
        raw["validation"] = datasets.load_dataset(
            builder, data_files=files, split=f"train[:{pct}%]", **kwargs
        )
        raw["train"] = datasets.load_dataset(builder, data_files=files, split=f"train[{pct}%:]", **kwargs)
    return raw


def tokenize_and_pack(
    raw: Any, tokenizer: Any, data_args: DataArguments, block_size: int, training_args: Any
) -> Any:
    """Tokenize every text, concatenate them and cut the stream into blocks of ``block_size`` tokens."""
    column = data_args.text_column

    def tokenize(batch: dict[str, list[Any]]) -> dict[str, Any]:
        return tokenizer([t if t is not None else "" for t in batch[column]])

    def pack(batch: dict[str, list[list[int]]]) -> dict[str, list[list[int]]]:
        keys = [k for k in ("input_ids", "attention_mask") if k in batch]
        joined = {k: list(chain.from_iterable(batch[k])) for k in keys}
        total = (len(joined["input_ids"]) // block_size) * block_size
        out = {k: [v[i : i + block_size] for i in range(0, total, block_size)] for k, v in joined.items()}
        out["labels"] = [list(ids) for ids in out["input_ids"]]
        return out

    with training_args.main_process_first(desc="tokenization and packing"):
        tokenized = raw.map(
            tokenize,
            batched=True,
            num_proc=data_args.preprocessing_num_workers,
            remove_columns=next(iter(raw.values())).column_names,
            load_from_cache_file=not data_args.overwrite_cache,
            desc="Tokenizing",
        )
        return tokenized.map(
            pack,
            batched=True,
            batch_size=1000,
            num_proc=data_args.preprocessing_num_workers,
            remove_columns=[c for c in next(iter(tokenized.values())).column_names],
            load_from_cache_file=not data_args.overwrite_cache,
            desc=f"Packing into blocks of {block_size}",
        )


# ---------------------------------------------------------------------------------------------- model
def load_config_and_tokenizer(model_args: ModelArguments) -> tuple[Any, Any, str | None]:
    from transformers import AutoTokenizer

    model_path = resolve_model_path(model_args.model_name_or_path)
    common = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision}
    config = resolve_config(model_args, model_path, "llama, gpt2, qwen2, mistral", **common)

    tokenizer_path = resolve_model_path(model_args.tokenizer_name, "--tokenizer_name") or model_path
    if tokenizer_path is None:
        raise RecipeError(
            "training from scratch needs --tokenizer_name (e.g. recipes/data/byte_tokenizer, made by "
            "recipes/make_byte_tokenizer.py)"
        )
    tokenizer = load_pretrained(
        AutoTokenizer.from_pretrained,
        tokenizer_path,
        "--tokenizer_name" if model_args.tokenizer_name else "--model_name_or_path",
        **common,
    )
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return config, tokenizer, model_path


def check_model_args(model_args: ModelArguments) -> None:
    """What the model flags alone can tell, before any data is read."""
    torch_dtype(model_args.dtype)
    if model_args.lora_r < 0:
        raise RecipeError(f"--lora_r={model_args.lora_r} must be >= 0 (0 trains all weights, no LoRA)")
    if model_args.lora_r > 0 and model_args.model_name_or_path is None:
        # Refused rather than saving the random base too: an adapter is worth sharing on a base others have.
        raise RecipeError(
            f"--lora_r={model_args.lora_r} needs a pretrained --model_name_or_path: with only "
            "--config_name / --model_type the base weights are random and never saved, so the adapter "
            "(its base_model_name_or_path would be None) could not be loaded. Train from scratch without "
            "--lora_r, then fine-tune its OUTPUT_DIR/final with --model_name_or_path and --lora_r"
        )


def check_lora_targets(model: Any, targets: list[str] | None) -> None:
    """Every ``--lora_target_modules`` name matches a module (peft's rule: the name or its last parts)."""
    if not targets:
        return
    names = [name for name, _ in model.named_modules() if name]
    missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if missing:
        leaves = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in model.named_modules()
                if name and not any(True for _ in module.children()) and not name.rsplit(".", 1)[-1].isdigit()
            }
        )
        raise RecipeError(
            f"--lora_target_modules: {', '.join(repr(t) for t in missing)} matches no module of "
            f"{type(model).__name__}; its module names are: {', '.join(leaves)} (or pass all-linear)"
        )


def load_model(model_args: ModelArguments, config: Any, tokenizer: Any, model_path: str | None) -> Any:
    from transformers import AutoModelForCausalLM

    if model_path is not None:
        model = load_pretrained(
            AutoModelForCausalLM.from_pretrained,
            model_path,
            "--model_name_or_path",
            config=config,
            dtype=torch_dtype(model_args.dtype),
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
        )
    else:
        model = AutoModelForCausalLM.from_config(config, **from_config_kwargs(model_args.dtype))
        logger.info(
            "training from scratch: %s, %.2fM parameters",
            type(model).__name__,
            sum(p.numel() for p in model.parameters()) / 1e6,
        )
    log_weights_dtype(model, model_args.dtype)
    embeddings = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > embeddings:
        model.resize_token_embeddings(len(tokenizer))

    if model_args.lora_r > 0:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise RecipeError("--lora_r needs the `peft` package (pip install peft)") from None
        targets = parse_list(model_args.lora_target_modules)
        if targets == ["all-linear"]:
            targets = "all-linear"
        else:
            check_lora_targets(model, targets)
        lora = LoraConfig(
            task_type="CAUSAL_LM",
            r=model_args.lora_r,
            lora_alpha=model_args.lora_alpha,
            lora_dropout=model_args.lora_dropout,
            target_modules=targets,
        )
        try:
            model = get_peft_model(model, lora)
        except ValueError as exc:
            raise RecipeError(f"--lora_target_modules={model_args.lora_target_modules!r}: {exc}") from None
        trainable, total = model.get_nb_trainable_parameters()
        logger.info(
            "LoRA r=%d: %d of %d parameters trainable (%.2f%%)",
            model_args.lora_r,
            trainable,
            total,
            100 * trainable / total,
        )
    return model


def choose_block_size(data_args: DataArguments, config: Any, tokenizer: Any) -> int:
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if data_args.block_size is None:
        candidates = [1024] + [c for c in (context, tokenizer.model_max_length) if c]
        return min(candidates)
    if data_args.block_size < 2:
        raise RecipeError(f"--block_size={data_args.block_size} must be at least 2")
    if context and data_args.block_size > context:
        raise RecipeError(
            f"--block_size={data_args.block_size} exceeds the model's context "
            f"(max_position_embeddings={context})"
        )
    return data_args.block_size


# ---------------------------------------------------------------------------------------------- run
def train_and_evaluate(
    model_args: ModelArguments, data_args: DataArguments, training_args: Any
) -> dict[str, Any]:
    from transformers import default_data_collator, set_seed

    from hf_lpwd import LPWDTrainer

    default_train_eval(training_args)
    check_model_args(model_args)
    raw = load_raw_datasets(data_args, model_args.cache_dir, need_validation=training_args.do_eval)
    if training_args.do_train and "train" not in raw:
        raise RecipeError("--do_train needs --train_file (or a --dataset_name with a train split)")
    if training_args.do_eval and "validation" not in raw:
        raise RecipeError("--do_eval needs --validation_file or a training set to split")
    for split, ds in raw.items():
        require_columns(ds.column_names, {"--text_column": data_args.text_column}, f"the {split} data")
    config, tokenizer, model_path = load_config_and_tokenizer(model_args)
    block_size = choose_block_size(data_args, config, tokenizer)
    set_seed(training_args.seed)
    model = load_model(model_args, config, tokenizer, model_path)
    check_layers(model, training_args)
    check_best_metric(training_args, ())  # the evaluation's loss; perplexity is added after it
    blocks = tokenize_and_pack(raw, tokenizer, data_args, block_size, training_args)
    for split, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
        if split in blocks and limit is not None:
            blocks[split] = blocks[split].select(range(min(limit, len(blocks[split]))))
    for split in ("train",) * training_args.do_train + ("validation",) * training_args.do_eval:
        if len(blocks[split]) == 0:
            raise RecipeError(
                f"the {split} data holds fewer than --block_size={block_size} tokens: "
                "lower --block_size or add text"
            )
    logger.info("blocks of %d tokens: %s", block_size, {k: len(v) for k, v in blocks.items()})

    trainer = LPWDTrainer(
        model=model,
        args=training_args,
        train_dataset=blocks["train"] if training_args.do_train else None,
        eval_dataset=blocks["validation"] if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=default_data_collator,
    )
    metrics = train_evaluate_save(
        trainer,
        training_args,
        blocks.get("train"),
        blocks.get("validation"),
        extra_eval_metrics=perplexity,
        extra_train_metrics={"block_size": block_size},
    )
    del trainer
    return metrics


def perplexity(eval_metrics: dict[str, Any]) -> dict[str, float]:
    """exp(mean token cross-entropy) of the validation split."""
    try:
        return {"perplexity": math.exp(eval_metrics["eval_loss"])}
    except OverflowError:
        return {"perplexity": float("inf")}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return recipe_main(ModelArguments, DataArguments, train_and_evaluate, argv)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_main(main)
