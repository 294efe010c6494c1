"""Optimizer parameter groups with layer-wise weight decay rates.

LPWD decays shallow parameters less than deep ones: with ``n = N + 2`` depth levels (embeddings,
N blocks, head), a parameter at depth ``d`` gets ``weight_decay * (d + 1) / n``, so the head gets
the full rate and the embeddings ``1 / n`` of it. A torch optimizer applies one weight decay per
param group, so the rate is expressed as one group per (depth, decayed) pair.

Which parameters are decayed at all (biases and norms are not) is transformers' decision, not
ours: we call ``transformers.Trainer.get_decay_parameter_names`` so the split matches what the
Trainer would do, and a caller that already has the list (the Trainer itself) can pass it in.

Group keys: ``params``; ``param_names`` (torch >= 2.6 optimizers support it natively and keep
it in ``state_dict()``, so a checkpoint says which tensor is which); ``weight_decay``; ``depth``
(an ``int``, or ``None`` for the two classic groups of ``layerwise=False``); ``lpwd_multiplier``
(``(d + 1) / n`` for decayed groups of the layer-wise profile, ``1.0`` for those of the uniform one,
``0.0`` for non-decayed ones); ``lr_multiplier`` (γ^(N+1−d) of layer-wise lr decay, 1.0 when off);
``tied`` (only where a tensor has several names); ``decay_target`` (``"zero"``, only on the groups
:func:`split_new_parameters` makes when the decay's target is ``init``). Torch keeps unknown keys in param
groups, so these ride along harmlessly (and into ``state_dict()``).

New parameters.  With the decay toward θ₀ (``decay_target="init"``), a parameter the checkpoint did not hold
(a classifier head ``from_pretrained`` initialised at random) has no pretrained value to return to: it
decays toward zero, in a group of its own (:func:`new_parameter_names`).  PEFT adapters are not "new" in this
sense: they decay toward their own initial values (LoRA's B₀ = 0, so B decays toward 0; A toward its random
A₀).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from typing import Any

from torch import nn

from .._compat.transformers import decay_parameter_names, loaded_from_checkpoint
from ..settings import TIED_DEPTHS, validate_choice, validate_layer_lr_decay
from .layers import LayerPattern, layer_depths_with_count

logger = logging.getLogger("hf_lpwd")

__all__ = ["lpwd_param_groups", "param_groups_for_settings", "default_decay_parameter_names", "layer_table",
           "format_layer_table", "tied_aliases", "shrink_warning", "SHRINK_LIMIT", "new_parameter_names",
           "split_new_parameters"]

SHRINK_LIMIT = 1.0
"""S above which the layer table warns: in our paired fine-tuning study accuracy collapsed beyond S ≈ 1."""

# How many example names layer_table keeps per depth.
_EXAMPLES = 3


def default_decay_parameter_names(model: nn.Module) -> list[str]:
    """Names transformers' Trainer would decay (everything but biases and norm weights).

    Transformers' own rule, not a copy of it (:func:`hf_lpwd._compat.transformers.decay_parameter_names`): the
    decay/no-decay split then follows whatever transformers decides.
    """
    return decay_parameter_names(model)


def lpwd_param_groups(
    model: nn.Module,
    weight_decay: float,
    layerwise: bool = True,
    layer_pattern: LayerPattern = None,
    decay_embeddings: bool = True,
    no_decay_names: Collection[str] | None = None,
    decay_names: Collection[str] | None = None,
    *,
    layer_lr_decay: float = 1.0,
    tied_depth: str = "input",
    depths: tuple[dict[str, int], int] | None = None,
) -> list[dict[str, Any]]:
    """Build torch optimizer param groups: λ and lr multiplier per depth.

    Two profiles over the same depths, independent of each other and of the decay timing:

    * λ: layer-wise ``λ·(d+1)/(N+2)`` (``layerwise=True``) or uniform ``λ``;
    * lr: ``lr·γ^(N+1−d)`` with ``γ = layer_lr_decay`` (LLRD, ULMFiT's discriminative rates, timm's
      ``layer_decay``), stored as the group key ``lr_multiplier``: :class:`hf_lpwd.LPWD` multiplies
      the lr it is given by it for every group that sets no ``lr`` of its own, and an lr scheduler then
      scales each group's own lr.

    Args:
        model: the model; frozen parameters (``requires_grad=False``) are left out of the
            groups but still count for depths, so a LoRA adapter sits at its layer's depth.
        weight_decay: the full rate ``λ`` (the head's).
        layerwise: the λ profile. ``False`` with ``layer_lr_decay=1`` gives the two classic groups
            (decayed at ``λ``, then not decayed), with the membership and order of
            ``Trainer.create_optimizer``; ``depth`` is ``None`` there.
        layer_pattern: override block detection, see :func:`hf_lpwd.layers.layer_depths`.
        decay_embeddings: ``False`` puts depth-0 parameters (embeddings, stem) at zero decay.
        no_decay_names: names that get no decay. Given alone, it replaces transformers' rule
            (everything else is decayed); with ``decay_names`` it is subtracted from them.
        decay_names: names that may be decayed, e.g. the Trainer's own
            ``self.get_decay_parameter_names(model)``; default: transformers' rule.
        layer_lr_decay: γ in (0, 1]; 1 (default) keeps one lr for every depth.
        tied_depth: a matrix shared by the input embedding and the output head (``tie_word_embeddings``)
            is one tensor and gets one depth: ``"input"`` → the depth of its first name (0, the
            embedding: the default), ``"output"`` → N+1 (the head). The group key ``tied`` lists
            ``"alias = name"`` for such tensors, so the layer table can show it.
        depths: ``(depths, N)`` from :func:`hf_lpwd.layers.layer_depths_with_count`, when the
            caller has parsed them already (the Trainer parses once and reuses them).

    Returns:
        Groups sorted by depth, the decayed group of a depth before its non-decayed one; empty
        groups are dropped (except in the classic pair, as in the Trainer).
    """
    validate_layer_lr_decay(layer_lr_decay, "layer_lr_decay")
    validate_choice(tied_depth, TIED_DEPTHS, "tied_depth")
    named = list(model.named_parameters())
    decayed = _decayed_names(model, named, decay_names, no_decay_names)
    trainable = [(n, p) for n, p in named if p.requires_grad]
    aliases = tied_aliases(model)

    if not layerwise and layer_lr_decay == 1.0:
        groups = []
        for is_decayed, rate, mult in ((True, weight_decay, 1.0), (False, 0.0, 0.0)):
            members = [(n, p) for n, p in trainable if (n in decayed) == is_decayed]
            groups.append(_group(members, rate, None, mult, 1.0, aliases))
        return groups

    if depths is None:
        try:
            depths = layer_depths_with_count(model, layer_pattern)
        except ValueError as exc:
            raise ValueError(
                f"{exc}\nWithout depths, use the uniform λ profile: layerwise=False with layer_lr_decay=1 "
                "(LPWDTrainer: --weight_decay_mode pwd / rwd / wd, --lpwd_layerwise false)"
            ) from None
    depth_of, n_blocks = depths
    levels = n_blocks + 2
    buckets: dict[tuple[int, bool], list[tuple[str, nn.Parameter]]] = {}
    for name, param in trainable:
        depth = n_blocks + 1 if (tied_depth == "output" and name in aliases) else depth_of[name]
        is_decayed = name in decayed and (decay_embeddings or depth > 0)
        buckets.setdefault((depth, is_decayed), []).append((name, param))

    groups = []
    for depth, is_decayed in sorted(buckets, key=lambda k: (k[0], not k[1])):
        mult = ((depth + 1) / levels if layerwise else 1.0) if is_decayed else 0.0
        lr_mult = float(layer_lr_decay) ** (n_blocks + 1 - depth)
        groups.append(_group(buckets[depth, is_decayed], weight_decay * mult, depth, mult, lr_mult, aliases))
    return groups


def param_groups_for_settings(
    model: nn.Module,
    settings: dict[str, Any],
    decay_names: Collection[str] | None = None,
    depths: tuple[dict[str, int], int] | None = None,
) -> list[dict[str, Any]]:
    """:func:`lpwd_param_groups` for resolved settings (:func:`hf_lpwd.settings.resolve_settings`); with the
    target ``init``, the parameters new at fine-tuning time in groups of their own toward zero."""
    groups = lpwd_param_groups(
        model, settings["weight_decay"], layerwise=bool(settings["layerwise"]),
        layer_pattern=settings["layer_pattern"], decay_embeddings=settings["decay_embeddings"],
        decay_names=decay_names, layer_lr_decay=settings["layer_lr_decay"], tied_depth=settings["tied_depth"],
        depths=depths,
    )
    if settings.get("decay_target", "zero") == "init":
        new = new_parameter_names(model)
        _warn_if_the_head_looks_resized(model, new)
        groups = split_new_parameters(groups, new)
    return groups


def _warn_if_the_head_looks_resized(model: nn.Module, new: Collection[str]) -> None:
    """An untied output head counted as new while the input embeddings were loaded, with as many rows: what
    ``resize_token_embeddings`` leaves (it marks the new head module, not its weight), or a head the
    checkpoint lacked.  Say which way it decays and how to keep a resized head's pretrained rows."""
    get_output = getattr(model, "get_output_embeddings", None)
    get_input = getattr(model, "get_input_embeddings", None)
    head = get_output() if callable(get_output) else None
    embeddings = get_input() if callable(get_input) else None
    weight, rows = getattr(head, "weight", None), getattr(embeddings, "weight", None)
    if weight is None or rows is None or weight is rows or not loaded_from_checkpoint(rows):
        return
    name = next((n for n, p in model.named_parameters() if p is weight), None)
    if name in new and weight.shape[0] == rows.shape[0]:
        logger.warning(
            "LPWD: %s has no checkpoint mark while the input embeddings have one, so it decays toward 0 as "
            "a new head. If it is the pretrained head resized by resize_token_embeddings (which drops the "
            "mark), set %s._is_hf_initialized = True before training to decay it toward its pretrained rows.",
            name, name,
        )


def _adapter_parameter_names(model: nn.Module) -> set[str]:
    """Names of PEFT adapter weights (LoRA's A and B, ...): trained from their own initial values.

    A PEFT tuner layer (``BaseTunerLayer``) names its adapter sub-modules in ``adapter_layer_names`` (read by
    that public attribute, so that peft stays an optional dependency).
    """
    names: set[str] = set()
    for prefix, module in model.named_modules():
        layer_names = getattr(module, "adapter_layer_names", None)
        if isinstance(layer_names, tuple) and all(isinstance(n, str) for n in layer_names):
            for layer_name in layer_names:
                sub = getattr(module, layer_name, None)
                if isinstance(sub, nn.Module) and not _is_saved_copy(module, layer_name):
                    names.update(f"{prefix}.{layer_name}.{n}" for n, _ in sub.named_parameters())
    return names


def _is_saved_copy(module: nn.Module, layer_name: str) -> bool:
    """PEFT's ``modules_to_save``: a full copy of ``original_module`` trained in its place, not an adapter."""
    return layer_name == "modules_to_save" and isinstance(getattr(module, "original_module", None), nn.Module)


def _saved_copy_originals(model: nn.Module) -> dict[str, nn.Parameter]:
    """Each parameter of a ``modules_to_save`` copy, by name, with the original module's parameter: the copy
    starts from it, so it is new at fine-tuning time exactly when the original is (a task head the checkpoint
    lacked), and pretrained otherwise (a copied ``lm_head``)."""
    originals: dict[str, nn.Parameter] = {}
    for prefix, module in model.named_modules():
        copies = getattr(module, "modules_to_save", None)
        if not (_is_saved_copy(module, "modules_to_save") and isinstance(copies, nn.ModuleDict)):
            continue
        of_original = dict(module.original_module.named_parameters())
        for adapter, copy in copies.items():
            for name, _ in copy.named_parameters():
                if name in of_original:
                    originals[f"{prefix}.modules_to_save.{adapter}.{name}"] = of_original[name]
    return originals


def new_parameter_names(model: nn.Module) -> list[str]:
    """Trainable parameters that are new at fine-tuning time: they decay toward zero under target ``init``.

    A model loaded by ``from_pretrained`` (transformers >= 5) marks the tensors it loaded; a trainable tensor
    left unmarked while others are marked was initialised at random (a task head the checkpoint lacked).  PEFT
    adapters are not new (they decay toward their own init); a ``modules_to_save`` copy is new when its
    original is.  A model built from a config has no marks:
    nothing is new, and ``init`` is its random initialisation.
    """
    named = list(model.named_parameters())
    if not any(loaded_from_checkpoint(p) for _, p in named):
        return []
    adapters = _adapter_parameter_names(model)
    originals = _saved_copy_originals(model)
    return [n for n, p in named
            if p.requires_grad and not loaded_from_checkpoint(originals.get(n, p)) and n not in adapters]


def split_new_parameters(groups: list[dict[str, Any]], new_names: Collection[str]) -> list[dict[str, Any]]:
    """Move the decayed parameters named in ``new_names`` to a group of their own, right after theirs, with
    ``decay_target="zero"`` (same λ, depth and lr): they have no pretrained value to decay toward."""
    new = set(new_names)
    if not new:
        return groups
    out: list[dict[str, Any]] = []
    for group in groups:
        names = group.get("param_names") or []
        moved = [i for i, n in enumerate(names) if n in new]
        if not moved or float(group.get("weight_decay", 0.0)) == 0.0:
            out.append(group)
            continue
        kept = [i for i in range(len(names)) if i not in moved]
        for members, extra in ((kept, {}), (moved, {"decay_target": "zero"})):
            if not members:
                continue
            part = {**group, **extra, "params": [group["params"][i] for i in members],
                    "param_names": [names[i] for i in members]}
            if "tied" in group:
                part["tied"] = [t for t in group["tied"] if t.split(" = ")[-1] in part["param_names"]]
                if not part["tied"]:
                    del part["tied"]
            out.append(part)
    return out


def tied_aliases(model: nn.Module) -> dict[str, list[str]]:
    """``{name: [other names of the same tensor]}`` for parameters registered under several names.

    ``named_parameters()`` yields a tied tensor once, under its first name (``embed_tokens.weight``);
    the other names (``lm_head.weight``) exist only with ``remove_duplicate=False``.
    """
    first: dict[int, str] = {}
    out: dict[str, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        key = id(param)
        if key in first:
            out.setdefault(first[key], []).append(name)
        else:
            first[key] = name
    return out


def _decayed_names(
    model: nn.Module,
    named: list[tuple[str, nn.Parameter]],
    decay_names: Collection[str] | None,
    no_decay_names: Collection[str] | None,
) -> set[str]:
    if decay_names is not None:
        decayed = set(decay_names)
    elif no_decay_names is not None:
        decayed = {n for n, _ in named}
    else:
        decayed = set(default_decay_parameter_names(model))
    return decayed - set(no_decay_names or ())


def _group(
    members: list[tuple[str, nn.Parameter]],
    weight_decay: float,
    depth: int | None,
    multiplier: float,
    lr_multiplier: float,
    aliases: dict[str, list[str]],
) -> dict[str, Any]:
    group: dict[str, Any] = {
        "params": [p for _, p in members],
        "param_names": [n for n, _ in members],
        "weight_decay": float(weight_decay),
        "depth": None if depth is None else int(depth),
        "lpwd_multiplier": float(multiplier),
        "lr_multiplier": float(lr_multiplier),
    }
    tied = [f"{alias} = {name}" for name, _ in members for alias in aliases.get(name, ())]
    if tied:
        group["tied"] = tied
    return group


def shrink_warning(rows: list[dict[str, Any]], limit: float = SHRINK_LIMIT) -> str | None:
    """The warning for decayed depths whose run shrink S exceeds ``limit``, or ``None``.

    Toward zero S shrinks what pretraining learned; toward θ₀ (depths that decay only toward it) it shrinks
    θ − θ₀, which is milder but not free: study Q6 (SST-2) found no difference from no decay up to S = 1
    and a loss at S = 4.  Each kind gets its own sentence.
    """
    over = {False: [], True: []}  # toward θ₀ only?
    for row in rows:
        if row.get("shrink") is not None and row["shrink"] > limit:
            where = "decayed parameters" if row["depth"] is None else f"depth {row['depth']}"
            only_init = set(row.get("targets") or {"zero": 1}) == {"init"}
            over[only_init].append(f"{where}: S = {row['shrink']:.3g}")
    if not (over[False] or over[True]):
        return None
    text = f"LPWD: the decay alone would shrink a weight by e^-S with shrink S > {limit:g} over this run"
    if over[False]:
        text += (
            f" ({', '.join(over[False])}). Fine-tuning, decay toward zero only hurt in our paired studies, "
            "and where the harm begins depends on the task: from S ≈ 0.25–0.5 on SST-2 (accuracy collapsed "
            "beyond S ≈ 1), already at S = 0.25 on a GLUE sentence-pair task; check yours with `hf-lpwd "
            "compare`."
        )
    if over[True]:
        listed = ", ".join(over[True])
        text += f" Toward θ₀ ({listed}):" if over[False] else f" ({listed}, toward θ₀):"
        text += (
            " a pull toward the pretrained weights did not differ from no decay up to S = 1 on SST-2 but "
            "cost 1.6 points at S = 4 (README, study Q6)."
        )
    return text + (
        " Lower --weight_decay (S is proportional to it), or give --lpwd_decay_timescale a larger τ. "
        "Training from scratch, where the weights grow, S ≈ 1–3 did not hurt (README, study v3 Q5)."
    )


def layer_table(groups: list[dict[str, Any]],
                shrink: Sequence[float | None] | None = None,
                decay_target: str = "zero") -> list[dict[str, Any]]:
    """Summarise param groups per depth, for the CLI and the Trainer's log.

    Each row: ``depth``, ``tensors``, ``params`` (element count), ``multiplier`` and
    ``weight_decay`` (those of the depth's decayed group; 0 if nothing there is decayed),
    ``lr_multiplier`` (LLRD's γ^(N+1−d)), ``decayed_tensors``, ``examples`` (a few parameter
    names, decayed ones first) and ``tied`` (``"alias = name"`` of tied tensors at that depth).
    With ``shrink`` (S per group, :func:`hf_lpwd.schedule.group_shrink`), each row also has ``shrink``: the
    largest S of its decayed groups.  ``targets``: what the decayed tensors of the depth decay toward
    (``{"init": n, "zero": m}`` tensor counts; a group's ``decay_target`` key, else ``decay_target``).
    """
    rows: dict[Any, dict[str, Any]] = {}
    for index, group in enumerate(groups):
        depth = group.get("depth")
        row = rows.setdefault(
            depth,
            {"depth": depth, "tensors": 0, "params": 0, "multiplier": 0.0, "weight_decay": 0.0,
             "lr_multiplier": float(group.get("lr_multiplier", 1.0)), "decayed_tensors": 0, "examples": [],
             "tied": [], "targets": {}},
        )
        row["tied"].extend(group.get("tied", ()))
        params = group["params"]
        names = group.get("param_names") or []
        row["tensors"] += len(params)
        row["params"] += sum(int(p.numel()) for p in params)
        if shrink is not None:
            row.setdefault("shrink", 0.0)
            if shrink[index] is None:
                row["shrink"] = None
            elif row["shrink"] is not None:
                row["shrink"] = max(row["shrink"], float(shrink[index]))
        if group.get("lpwd_multiplier", 0.0) > 0 or group.get("weight_decay", 0.0) > 0:
            row["multiplier"] = max(row["multiplier"], float(group.get("lpwd_multiplier", 0.0)))
            row["weight_decay"] = max(row["weight_decay"], float(group["weight_decay"]))
            row["decayed_tensors"] += len(params)
            target = group.get("decay_target", decay_target)
            row["targets"][target] = row["targets"].get(target, 0) + len(params)
        row["examples"].extend(names[: _EXAMPLES - len(row["examples"])])
    return list(rows.values())


def format_layer_table(rows: list[dict[str, Any]], examples_shown: int = 2,
                       decayed_counts: bool = False) -> str:
    """Plain-text table of :func:`layer_table` rows (the Trainer's start-of-training log and, with
    ``decayed_counts`` — tensors and parameters as decayed/all, from rows ``hf-lpwd inspect`` adds them to —
    the CLI's)."""
    with_shrink = any("shrink" in row for row in rows)
    with_target = any("init" in row.get("targets", {}) for row in rows)
    header = ("depth", "tensors", "parameters", "lr_mult", "λ_mult", "weight_decay",
              *(("shrink",) if with_shrink else ()), *(("target",) if with_target else ()), "examples")
    lines = [header]
    tied: list[str] = []
    for row in rows:
        examples = ", ".join(row["examples"][:examples_shown])
        shrink = row.get("shrink")
        lines.append(
            (
                str(row["depth"]),
                f"{row['decayed_tensors']}/{row['tensors']}" if decayed_counts else str(row["tensors"]),
                f"{row['decayed_params']:,}/{row['params']:,}" if decayed_counts else f"{row['params']:,}",
                f"{row.get('lr_multiplier', 1.0):.4g}",
                f"{row['multiplier']:.4f}",
                f"{row['weight_decay']:.6g}",
                *((("?" if shrink is None else f"{shrink:.4g}"),) if with_shrink else ()),
                *((_target_cell(row.get("targets", {})),) if with_target else ()),
                examples,
            )
        )
        tied.extend(t if row["depth"] is None else f"{t} (depth {row['depth']})" for t in row.get("tied", ()))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    out = []
    for line in lines:
        cells = [cell.rjust(width) for cell, width in zip(line, widths, strict=False)]
        out.append("  ".join([*cells, line[-1]]))
    out.extend(f"tied: {t}" for t in tied)
    return "\n".join(out)


def _target_cell(targets: dict[str, int]) -> str:
    """``θ₀``, ``0``, or ``θ₀; 0 (n new)`` where new tensors of the depth decay toward zero; ``-``: none
    decayed."""
    if not targets:
        return "-"
    if set(targets) == {"init"}:
        return "θ₀"
    if set(targets) == {"zero"}:
        return "0"
    return f"θ₀; 0 ({targets['zero']} new)"


def __getattr__(name: str) -> object:
    """``group_shrink`` moved to :mod:`hf_lpwd.schedule` (it reads the schedule and the decay rule, not the
    model)."""
    if name == "group_shrink":
        from ..schedule import group_shrink

        return group_shrink
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
