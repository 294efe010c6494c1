"""transformers' private names the package relies on (guarded by ``tests/test_compat.py``).

``PRIVATE_NAMES`` lists them; each function below is the only place one is read.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from torch import nn

PRIVATE_NAMES = (
    "PreTrainedModel._no_split_modules",
    "PreTrainedModel._from_config",
    "_BaseAutoModelClass._model_mapping",
    "Trainer._load_best_model",
    "Trainer._load_from_checkpoint",
    "Trainer._push_from_checkpoint (copies a fixed list of files into output_dir, uploads output_dir)",
    "Trainer.push_in_progress (read to know whether _push_from_checkpoint will push)",
    "Trainer._hp_search_setup (sets a search trial's values, casting each to the type of the value before)",
    "Trainer.set_initial_training_values (its tuple, index 1)",
    "Trainer.get_decay_parameter_names (called unbound)",
    "TrainingArguments.hf_deepspeed_config",
    "tensor._is_hf_initialized (set by from_pretrained on the tensors it loaded; inspect sets it too)",
)

# The Trainer method LPWDMixin overrides to settle before the best checkpoint is loaded. No callback or public
# method runs between the end of the last step and that load (``on_train_end`` comes after it).
LOAD_BEST_MODEL_METHOD = "_load_best_model"
# The Trainer method that loads a checkpoint's weights to resume (not under DeepSpeed / FSDP).
LOAD_CHECKPOINT_METHOD = "_load_from_checkpoint"


def no_split_module_names(model: nn.Module) -> frozenset[str]:
    """Class names in ``_no_split_modules`` of ``model`` and its sub-modules (a multi-tower model's towers).

    No public attribute says which modules are a model's blocks; this one says which must not be split
    across devices, and is read only as a hint (see ``hf_lpwd.model.layers._module_hints``): since
    transformers 5.25 it also names embeddings, heads and single decoder layers.
    """
    names: set[str] = set()
    for module in model.modules():
        declared = getattr(module, "_no_split_modules", None)
        if isinstance(declared, (list, tuple, set, frozenset)):
            names.update(str(c) for c in declared)
    return frozenset(names)


def steps_per_epoch(values: Sequence[Any]) -> int:
    """Optimizer steps per epoch from ``Trainer.set_initial_training_values``'s tuple (its index 1).

    The Trainer computes this count (gradient accumulation, ``max_steps``, a dataloader without a length)
    only there, and exposes it in no attribute or callback before the optimizer is built; re-deriving it would
    drift from the Trainer's own count.
    """
    return int(values[1])


def model_from_config(cls: Any, config: Any) -> nn.Module:
    """A model of class ``cls`` built from ``config`` as ``from_pretrained`` would, without weights.

    Auto classes have the public ``from_config``; a concrete model class has only the private
    ``_from_config``, which (unlike ``cls(config)``) resolves the attention implementation and dtype first.
    """
    if hasattr(cls, "from_config"):
        return cls.from_config(config)
    return cls._from_config(config)


def auto_class_accepts(auto_cls: Any, config: Any) -> bool:
    """Whether an ``AutoModelFor...`` class has a model for ``config``'s type (True if it cannot say).

    The auto class keeps its mapping in ``_model_mapping``; the public ``MODEL_FOR_..._MAPPING`` constants
    hold the same lazy mappings, but by a name that is not derivable from the auto class.
    """
    mapping = getattr(auto_cls, "_model_mapping", None)
    return mapping is None or type(config) in mapping


def loaded_from_checkpoint(param: Any) -> bool | None:
    """Whether ``from_pretrained`` loaded this tensor from the checkpoint (``None``: the model says nothing).

    transformers (>= 5) marks every tensor it loaded with ``_is_hf_initialized = True`` and leaves the ones it
    had to initialise (missing keys: a new task head) unmarked; ``output_loading_info`` is returned, never
    stored on the model, so this mark is the only record the Trainer can read.
    """
    return getattr(param, "_is_hf_initialized", None)


def decay_parameter_names(model: nn.Module) -> list[str]:
    """The names transformers' Trainer decays, by its own rule (biases and norm weights excluded).

    ``Trainer.get_decay_parameter_names`` is public but an instance method; it never reads ``self``, so it is
    called unbound rather than copied (a copy would drift from transformers' rule).
    """
    from transformers import Trainer

    return list(Trainer.get_decay_parameter_names(None, model))  # type: ignore[arg-type]


def deepspeed_config_dict(args: Any) -> dict[str, Any] | None:
    """The DeepSpeed config as a dict (``--deepspeed`` a path or a dict), or None without DeepSpeed.

    ``TrainingArguments.__post_init__`` loads the file into ``hf_deepspeed_config`` (no public attribute holds
    the loaded dict); a dict given in Python is also kept as ``args.deepspeed``.
    """
    config = getattr(getattr(args, "hf_deepspeed_config", None), "config", None)
    if config is None and isinstance(getattr(args, "deepspeed", None), dict):
        config = args.deepspeed
    return config if isinstance(config, dict) else None


def trainer_loads_best_model_privately() -> bool:
    """True while ``Trainer._load_best_model`` exists, takes only ``self``, and the Trainer calls it."""
    from transformers import Trainer

    method = getattr(Trainer, LOAD_BEST_MODEL_METHOD, None)
    if method is None:
        return False
    if list(inspect.signature(method).parameters) != ["self"]:
        return False
    return f"self.{LOAD_BEST_MODEL_METHOD}()" in inspect.getsource(Trainer)


# The Trainer method that sets a search trial's values on the arguments (LPWDMixin keeps a None and restores
# the run's LPWD flags per trial).
HP_SEARCH_SETUP_METHOD = "_hp_search_setup"


def trainer_sets_trials_through_the_private_method() -> bool:
    """True while ``Trainer._hp_search_setup(trial)`` exists, ``train()`` calls it, and it reads the values
    from ``self.hp_space(trial)`` (Optuna) or the trial itself (Ray, W&B)."""
    from transformers import Trainer

    method = getattr(Trainer, HP_SEARCH_SETUP_METHOD, None)
    if method is None or list(inspect.signature(method).parameters) != ["self", "trial"]:
        return False
    source = inspect.getsource(method)
    return (f"self.{HP_SEARCH_SETUP_METHOD}(trial)" in inspect.getsource(Trainer)
            and "self.hp_space(trial)" in source and "params = trial" in source)


def trainer_resumes_through_the_private_method() -> bool:
    """True while ``Trainer._load_from_checkpoint(resume_from_checkpoint, model=None)`` exists and ``train()``
    calls it."""
    from transformers import Trainer

    method = getattr(Trainer, LOAD_CHECKPOINT_METHOD, None)
    if method is None:
        return False
    if list(inspect.signature(method).parameters) != ["self", "resume_from_checkpoint", "model"]:
        return False
    return f"self.{LOAD_CHECKPOINT_METHOD}(resume_from_checkpoint)" in inspect.getsource(Trainer)


# The Trainer method that pushes ``output_dir`` during training (``hub_strategy`` every_save / checkpoint /
# all_checkpoints) after copying the checkpoint's model files into it.
PUSH_FROM_CHECKPOINT_METHOD = "_push_from_checkpoint"


def will_push_from_checkpoint(trainer: Any) -> bool:
    """Whether ``Trainer._push_from_checkpoint`` will upload now: on the main process, unless the strategy
    pushes only at the end or the last push is still running (and ``hub_always_push`` is off)."""
    args = trainer.args
    if not trainer.is_world_process_zero() or args.hub_strategy == "end":
        return False
    running = getattr(trainer, "push_in_progress", None)
    return args.hub_always_push or running is None or running.is_done()


def trainer_pushes_checkpoints_through_the_private_method() -> bool:
    """True while ``Trainer._push_from_checkpoint(checkpoint_folder)`` exists, the Trainer calls it, and it
    skips as :func:`will_push_from_checkpoint` says and uploads ``output_dir``."""
    from transformers import Trainer

    method = getattr(Trainer, PUSH_FROM_CHECKPOINT_METHOD, None)
    if method is None or list(inspect.signature(method).parameters) != ["self", "checkpoint_folder"]:
        return False
    source = inspect.getsource(method)
    return (f"self.{PUSH_FROM_CHECKPOINT_METHOD}(" in inspect.getsource(Trainer)
            and "self.push_in_progress.is_done()" in source and "hub_always_push" in source
            and "folder_path=output_dir" in source)


def _saved_weight_names(folder: str) -> set[str] | None:
    """The tensor names of a checkpoint's safetensors weights (one file or an index), ``None`` if it has
    none."""
    import json
    import os

    from safetensors import safe_open

    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            return set(json.load(f).get("weight_map", {}))
    single = os.path.join(folder, "model.safetensors")
    if not os.path.isfile(single):
        return None
    with safe_open(single, framework="pt") as f:
        return set(f.keys())


def mark_saved_tensors(model: nn.Module, folder: str) -> int:
    """Mark, as ``from_pretrained`` does (:func:`loaded_from_checkpoint`), the parameters whose tensors the
    checkpoint in ``folder`` holds, by name with or without the model's ``base_model_prefix`` (a task model
    built over a base checkpoint); the number marked.

    ``hf-lpwd inspect`` builds the model on the meta device without loading, so only this says which
    parameters a fine-tuning run would find new (a task head), and so decay toward zero under target init.
    """
    import os

    saved = _saved_weight_names(folder) if os.path.isdir(folder) else None
    if not saved:
        return 0
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    marked = 0
    for name, param in model.named_parameters():
        bare = name[len(prefix):] if prefix != "." and name.startswith(prefix) else name
        if name in saved or bare in saved or (prefix != "." and prefix + name in saved):
            param._is_hf_initialized = True
            marked += 1
    return marked


def reload_renamed_checkpoint(model: nn.Module, folder: str) -> int:
    """Load ``folder``'s weights into ``model`` through ``from_pretrained`` where the Trainer's raw load
    missed them; the number of names the checkpoint holds under another name than the model (0: nothing done).

    transformers 5.25's Trainer loads a checkpoint by the names in the file (``load_state_dict(..., False)``),
    but a model with a key conversion saves under its legacy names (ViT: ``vit.encoder.layer.0.attention
    .attention.query`` for ``vit.layers.0.attention.q_proj``), so those tensors keep the weights they had and
    the Trainer only warns about missing keys.  ``from_pretrained`` applies the conversion; its values are
    copied in place (the optimizer's parameters stay the same tensors).
    """
    from transformers import PreTrainedModel

    saved = _saved_weight_names(folder)
    if saved is None or not isinstance(model, PreTrainedModel):
        return 0
    renamed = len(saved - set(model.state_dict()))
    if renamed:
        dtype = next(model.parameters()).dtype
        loaded = type(model).from_pretrained(folder, dtype=dtype)
        model.load_state_dict(loaded.state_dict(), strict=True)
    return renamed
