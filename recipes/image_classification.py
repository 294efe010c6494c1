"""Image classification with LPWD, the paper's own setting: ViT / ConvNeXt / Swin on CIFAR-style data.

    python recipes/image_classification.py recipes/configs/vit_cifar_lpwd.yaml   # Hub: CIFAR-10, ViT-B/16
    python recipes/image_classification.py --model_name_or_path google/vit-base-patch16-224-in21k \\
        --train_dir data/train --validation_dir data/val --output_dir runs/vit \\
        --weight_decay_mode lpwd --weight_decay 0.05 --learning_rate 1e-4
    # from scratch: a config (folder / config.json, or --model_type vit --config_overrides ...)
    python recipes/image_classification.py --model_type vit \\
        --config_overrides image_size=32,patch_size=4,hidden_size=192,num_hidden_layers=6 ...
    accelerate launch --multi_gpu --num_processes 8 recipes/image_classification.py ...

Data: image folders (``CLASS_NAME/xxx.png``, datasets' ``imagefolder`` loader) or a Hub dataset
(``--dataset_name uoft-cs/cifar10``).  Transforms (no torchvision needed): random resized crop and
horizontal flip for training (drawn per example from the seed and the epoch: a resumed run is bitwise the
uninterrupted one), resize (+ centre crop) for evaluation, then the image processor's normalisation.
Metric (``--metric``): accuracy, the ``evaluate`` module shipped in ``recipes/metrics``.
The finished model, image processor, ``lpwd_config.json`` and ``all_results.json`` go to
``OUTPUT_DIR/final``.  ``--dtype`` sets the weights' dtype (default auto: the checkpoint's own).
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from recipe_utils import (
    RecipeError,
    check_best_metric,
    check_dir,
    check_layers,
    classification_metric_names,
    classification_metrics,
    default_train_eval,
    dtype_field,
    from_config_kwargs,
    load_metrics,
    load_pretrained,
    log_weights_dtype,
    recipe_main,
    require_columns,
    resolve_config,
    resolve_model_path,
    run_main,
    torch_dtype,
    train_evaluate_save,
)

logger = logging.getLogger("hf_lpwd.recipes")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Pretrained model (local folder or Hub id). Leave out to train from scratch."},
    )
    config_name: str | None = field(
        default=None, metadata={"help": "Config to train from scratch (folder or config.json)."}
    )
    model_type: str | None = field(
        default=None, metadata={"help": "Train from scratch from this architecture (vit, convnext, swin)."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Config values for a model trained from scratch, e.g. 'image_size=32,patch_size=4'."
        },
    )
    image_processor_name: str | None = field(
        default=None,
        metadata={
            "help": "Image processor (folder or Hub id), if not the model's own; from scratch the default is "
            "a resize to the config's image_size with ImageNet mean/std."
        },
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where downloaded models and datasets are cached."}
    )
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit)."})
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Replace a pretrained head with another number of classes (ImageNet → CIFAR)."},
    )
    dtype: str = dtype_field()


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset, e.g. uoft-cs/cifar10."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration."})
    train_dir: str | None = field(
        default=None, metadata={"help": "Folder of training images, one sub-folder per class."}
    )
    validation_dir: str | None = field(
        default=None, metadata={"help": "Folder of evaluation images, same classes."}
    )
    train_split_name: str = field(default="train", metadata={"help": "Split of --dataset_name to train on."})
    validation_split_name: str | None = field(
        default=None,
        metadata={"help": "Split to evaluate on; default: validation, else test (CIFAR has only test)."},
    )
    validation_split_percentage: int = field(
        default=0,
        metadata={"help": "Without an evaluation split: hold out this percentage of the training images."},
    )
    image_column: str | None = field(
        default=None, metadata={"help": "Column with the images; default: image or img."}
    )
    label_column: str | None = field(
        default=None, metadata={"help": "Column with the labels; default: label or labels."}
    )
    crop_scale_min: float = field(
        default=0.08,
        metadata={"help": "Training random-resized-crop keeps 'crop_scale_min'..1 of the image area."},
    )
    metric: str = field(
        default="accuracy",
        metadata={
            "help": "Comma-separated metrics: shipped with the recipes (accuracy, f1, matthews_correlation; "
            "offline), a local `evaluate` metric script, or with Hub access an `evaluate` metric NAME or "
            "NAME:CONFIG. F1 is macro-averaged with more than 2 classes."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training images."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N evaluation images."}
    )


# ---------------------------------------------------------------------------------------------- data
def _image_files(folder: str) -> int:
    count = 0
    for _, _, files in os.walk(folder):
        count += sum(1 for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
    return count


def load_raw_datasets(data_args: DataArguments, cache_dir: str | None) -> Any:
    import datasets

    if data_args.dataset_name is not None:
        try:
            raw = datasets.load_dataset(
                data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir
            )
        except Exception as exc:  # the Hub's errors are many; all mean the same to the user
            raise RecipeError(
                f"--dataset_name={data_args.dataset_name} could not be loaded ({type(exc).__name__}: {exc}). "
                "Without Hub access use --train_dir/--validation_dir (image folders)."
            ) from None
        splits = {}
        if data_args.train_split_name in raw:
            splits["train"] = raw[data_args.train_split_name]
        eval_names = (
            [data_args.validation_split_name] if data_args.validation_split_name else ["validation", "test"]
        )
        for name in eval_names:
            if name in raw:
                splits["validation"] = raw[name]
                break
        raw = datasets.DatasetDict(splits)
    else:
        if data_args.train_dir is None and data_args.validation_dir is None:
            raise RecipeError("no data: pass --train_dir/--validation_dir (image folders) or --dataset_name")
        files = {}
        for split, folder, flag in (
            ("train", data_args.train_dir, "--train_dir"),
            ("validation", data_args.validation_dir, "--validation_dir"),
        ):
            if folder is None:
                continue
            check_dir(folder, flag)
            if _image_files(folder) == 0:
                raise RecipeError(
                    f"{flag}={folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}) in class sub-folders"
                )
            files[split] = os.path.join(folder, "**")
        # One call for all splits, so that the class names (ClassLabel) are the same in every split.
        raw = datasets.load_dataset("imagefolder", data_files=files, cache_dir=cache_dir)
    if "validation" not in raw and "train" in raw and data_args.validation_split_percentage > 0:
        parts = raw["train"].train_test_split(test_size=data_args.validation_split_percentage / 100, seed=0)
        raw = datasets.DatasetDict({"train": parts["train"], "validation": parts["test"]})
    return raw


def resolve_columns(raw: Any, data_args: DataArguments) -> tuple[str, str]:
    columns = next(iter(raw.values())).column_names

    def pick(given: str | None, candidates: tuple[str, ...], flag: str) -> str:
        if given is not None:
            return given
        for name in candidates:
            if name in columns:
                return name
        raise RecipeError(
            f"cannot tell which column holds the {flag[2:].split('_')[0]}s; pass {flag} (columns: {columns})"
        )

    image = pick(data_args.image_column, ("image", "img", "pixel_values"), "--image_column")
    label = pick(data_args.label_column, ("label", "labels", "fine_label"), "--label_column")
    for split, ds in raw.items():
        require_columns(
            ds.column_names, {"--image_column": image, "--label_column": label}, f"the {split} data"
        )
    return image, label


def label_names(raw: Any, label_column: str) -> list[str]:
    import datasets

    feature = next(iter(raw.values())).features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    values = sorted({v for ds in raw.values() for v in ds[label_column]})
    if len(values) < 2:
        raise RecipeError(
            f"--label_column={label_column!r} has {len(values)} distinct value(s); need at least 2"
        )
    if values != list(range(len(values))):
        raise RecipeError(f"--label_column={label_column!r} must hold class ids 0..K-1 or be a ClassLabel")
    return [str(v) for v in values]


# ---------------------------------------------------------------------------------------------- transforms
def processor_geometry(processor: Any) -> tuple[tuple[int, int], tuple[float, ...], tuple[float, ...], float]:
    """(height, width), mean, std and the eval crop fraction of an image processor."""

    def as_dict(value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        items = value.items() if hasattr(value, "items") else vars(value).items()
        return {k: v for k, v in items if v is not None}

    size = as_dict(getattr(processor, "crop_size", None)) or as_dict(getattr(processor, "size", None))
    if "height" in size and "width" in size:
        hw = (int(size["height"]), int(size["width"]))
    elif "shortest_edge" in size:
        hw = (int(size["shortest_edge"]),) * 2
    else:
        raise RecipeError(f"cannot read the image size from the image processor's size={size}")
    mean = tuple(getattr(processor, "image_mean", None) or IMAGENET_MEAN)
    std = tuple(getattr(processor, "image_std", None) or IMAGENET_STD)
    crop_pct = getattr(processor, "crop_pct", None) or 1.0
    return hw, mean, std, float(crop_pct)


def _to_array(image: Any, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    arr = np.asarray(image, dtype=np.float32) / 255.0
    return ((arr - mean) / std).transpose(2, 0, 1)


def random_resized_crop(
    image: Any, size: tuple[int, int], scale: tuple[float, float], rng: Any = random
) -> Any:
    """torchvision's RandomResizedCrop (ratio 3/4..4/3), in PIL."""
    from PIL import Image

    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return image.resize((size[1], size[0]), Image.BICUBIC, box=(left, top, left + w, top + h))
    return image.resize((size[1], size[0]), Image.BICUBIC)


def center_resize(image: Any, size: tuple[int, int], crop_pct: float) -> Any:
    """Resize so the shorter side is size/crop_pct, then centre-crop to size."""
    from PIL import Image

    width, height = image.size
    scale = max(size[0] / height, size[1] / width) / crop_pct
    new_w, new_h = max(size[1], round(width * scale)), max(size[0], round(height * scale))
    image = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size[1]) // 2, (new_h - size[0]) // 2
    return image.crop((left, top, left + size[1], top + size[0]))


def make_transforms(
    processor: Any, image_column: str, label_column: str, crop_scale_min: float
) -> tuple[Any, Any]:
    size, mean, std, crop_pct = processor_geometry(processor)
    mean_arr = np.asarray(mean, dtype=np.float32)
    std_arr = np.asarray(std, dtype=np.float32)

    def train_transform(batch: dict[str, list[Any]], rng: Any = random) -> dict[str, Any]:
        """Crop and flip drawn from ``rng`` (training: :class:`AugmentedImages`' per-example generator)."""
        pixels = []
        for image in batch[image_column]:
            image = random_resized_crop(image.convert("RGB"), size, (crop_scale_min, 1.0), rng)
            if rng.random() < 0.5:
                image = image.transpose(0)  # Image.FLIP_LEFT_RIGHT
            pixels.append(_to_array(image, mean_arr, std_arr))
        return {"pixel_values": pixels, "labels": batch[label_column]}

    def eval_transform(batch: dict[str, list[Any]]) -> dict[str, Any]:
        pixels = [
            _to_array(center_resize(im.convert("RGB"), size, crop_pct), mean_arr, std_arr)
            for im in batch[image_column]
        ]
        return {"pixel_values": pixels, "labels": batch[label_column]}

    return train_transform, eval_transform


class AugmentedImages:
    """The training split, each example augmented by ``random.Random("seed:epoch:index")``.

    A crop is then a function of the seed, the epoch and the example, not of what drew from a global generator
    before it: Accelerate's dataloader transforms the next batch before the Trainer saves a checkpoint's RNG
    state, so crops drawn from the global ``random`` differ after a resume.  Keyed, a resumed run sees the
    crops of the uninterrupted one (bitwise).  The epoch sits in shared memory, so that dataloader workers,
    persistent ones too, read the epoch :class:`EpochToData` sets at each epoch's start."""

    def __init__(self, data: Any, transform: Any, seed: int) -> None:
        import torch

        self.data, self.transform, self.seed = data, transform, seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.data[int(index)]
        rng = random.Random(f"{self.seed}:{self.epoch}:{int(index)}")
        out = self.transform({k: [v] for k, v in example.items()}, rng)
        return {k: v[0] for k, v in out.items()}


def epoch_callback(dataset: AugmentedImages) -> Any:
    """A ``TrainerCallback`` that gives ``dataset`` the epoch at each epoch's start (a resumed run's too), in
    every process: Accelerate's ``set_epoch`` reaches a dataset only where no sampler takes it first."""
    from transformers import TrainerCallback

    class EpochToData(TrainerCallback):
        def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # state.epoch = epoch + finished steps / steps per epoch: its whole part is the epoch starting now
            dataset.set_epoch(int(state.epoch or 0))

    return EpochToData()


def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    return {
        "pixel_values": torch.from_numpy(
            np.stack([np.asarray(e["pixel_values"], dtype=np.float32) for e in examples])
        ),
        "labels": torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long),
    }


# ---------------------------------------------------------------------------------------------- model
def load_model_and_processor(model_args: ModelArguments, labels: list[str]) -> tuple[Any, Any]:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model_path = resolve_model_path(model_args.model_name_or_path)
    common = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision}
    label_kwargs = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
    }
    config = resolve_config(model_args, model_path, "vit, convnext, swin", **common)
    for key, value in label_kwargs.items():
        setattr(config, key, value)

    processor_path = model_args.image_processor_name or model_path
    if processor_path is not None:
        processor = load_pretrained(
            AutoImageProcessor.from_pretrained,
            processor_path,
            "--image_processor_name" if model_args.image_processor_name else "--model_name_or_path",
            **common,
        )
    else:
        from transformers import ViTImageProcessor

        side = int(getattr(config, "image_size", 224))
        processor = ViTImageProcessor(
            size={"height": side, "width": side}, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD)
        )
    if model_path is not None:
        model = load_pretrained(
            AutoModelForImageClassification.from_pretrained,
            model_path,
            "--model_name_or_path",
            config=config,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            dtype=torch_dtype(model_args.dtype),
            **common,
        )
    else:
        model = AutoModelForImageClassification.from_config(config, **from_config_kwargs(model_args.dtype))
    log_weights_dtype(model, model_args.dtype)
    return model, processor


# ---------------------------------------------------------------------------------------------- run
def train_and_evaluate(
    model_args: ModelArguments, data_args: DataArguments, training_args: Any
) -> dict[str, Any]:
    from transformers import set_seed

    from hf_lpwd import LPWDTrainer

    default_train_eval(training_args)
    torch_dtype(model_args.dtype)
    raw = load_raw_datasets(data_args, model_args.cache_dir)
    if training_args.do_train and "train" not in raw:
        raise RecipeError("--do_train needs --train_dir (or a --dataset_name with a train split)")
    if training_args.do_eval and "validation" not in raw:
        raise RecipeError(
            "--do_eval needs --validation_dir, a validation/test split or --validation_split_percentage"
        )
    image_column, label_column = resolve_columns(raw, data_args)
    labels = label_names(raw, label_column)
    for split, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
        if split in raw and limit is not None:
            raw[split] = raw[split].select(range(min(limit, len(raw[split]))))
    compute_metrics = classification_metrics(load_metrics(data_args.metric), len(labels))
    check_best_metric(training_args, classification_metric_names(compute_metrics, len(labels)))
    set_seed(training_args.seed)
    model, processor = load_model_and_processor(model_args, labels)
    check_layers(model, training_args)
    train_transform, eval_transform = make_transforms(
        processor, image_column, label_column, data_args.crop_scale_min
    )
    train_data = None
    if "train" in raw:
        train_data = AugmentedImages(raw["train"], train_transform, training_args.seed)
    if "validation" in raw:
        raw["validation"].set_transform(eval_transform)
    training_args.remove_unused_columns = False  # the transforms read the image column
    logger.info("classes=%s splits=%s", labels, {k: len(v) for k, v in raw.items()})

    trainer = LPWDTrainer(
        model=model,
        args=training_args,
        train_dataset=train_data if training_args.do_train else None,
        eval_dataset=raw["validation"] if training_args.do_eval else None,
        processing_class=processor,
        data_collator=collate,
        compute_metrics=compute_metrics,
        callbacks=[epoch_callback(train_data)] if training_args.do_train else None,
    )
    metrics = train_evaluate_save(trainer, training_args, raw.get("train"), raw.get("validation"))
    del trainer
    return metrics


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return recipe_main(ModelArguments, DataArguments, train_and_evaluate, argv)


if __name__ == "__main__":
    run_main(main)
