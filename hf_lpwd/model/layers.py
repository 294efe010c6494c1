"""Depth of every parameter in a network, parsed from parameter names.

LPWD scales weight decay by how deep a parameter sits in the network, so every parameter needs
a depth. Hugging Face models encode the position of repeated blocks in parameter names
(``model.layers.3.mlp...``), so one general algorithm over the names covers every architecture;
a per-architecture table would rot with every new model.

The contract (``N`` = total number of blocks over all stacks):

* depth 0 -- everything registered before the first block (embeddings, stem, patch embedding);
* depth 1..N -- the repeated blocks in forward order; every parameter of one block shares a depth.
  Several stacks (T5/BART encoder then decoder, a vision tower then the language model) are
  *chained*: the second stack continues counting where the first stopped.
* depth N+1 -- everything registered after the last block (final norm, pooler, heads).

How a name is analysed:

1. Wrapper segments (``module.``, ``_orig_mod.``, ``_fsdp_wrapped_module.`` at any level,
   ``_checkpoint_wrapped_module.``, PEFT's ``base_model.model.``) and PEFT leaf parts
   (``lora_A.<adapter>``, ``base_layer``, ...) are dropped, so wrapping never changes a depth.
2. A *container* is a name prefix followed by an integer segment (``model.layers`` in
   ``model.layers.3.mlp.up_proj.weight``). Sibling containers of equal length with different
   contents are *parallel lists*, one stack whose block i is the union of their i-th elements
   (XLM's ``attentions.i``/``layer_norm1.i``/``ffns.i``/``layer_norm2.i``). A stack's elements are
   composite -- parameters in two or more sub-modules, so a ``ModuleList`` of bare layers is not a
   stack; a bare list whose elements are of different classes (from a module: ConvNeXt's
   ``downsampling_layer``, a norm then a conv) is a pipeline and joins no other list. Of the stacks
   under one parent only the longest is one (a shorter sibling such as Qwen3-VL's
   ``deepstack_merger_list`` is a *side list* feeding other layers); a one-element list is a stack only
   if it holds what another stack holds (Canine's one-layer encoders) or if nothing else is (a one-layer
   model). Lists inside a block (T5's ``block.3.layer.0``, MoE experts,
   per-head lists) are claimed by the outer block.
3. Stacks are chained in order of first appearance in ``named_parameters()``; the blocks of one
   stack are numbered in index order, which is forward order.
4. Hierarchical models (Swin ``encoder.layers.0.blocks.1``, ConvNeXt ``encoder.stages.2.layers.0``,
   PVT's parallel ``patch_embeddings.i``/``block.i.j``, MobileViT's ``layer.4.transformer.layer.j``)
   have *stages*: if the elements of a stack hold stacks of their own (at any depth, a one-element
   list counting) of alike modules not named for experts or heads, holding most of the weight, and
   the stages hold more blocks than there are stages, the inner elements are the blocks. Elements
   holding no inner stack may sit between stages when they differ from them (SwiftFormer's
   downsamples). One level only. A stage's own parameters (downsample, patch embedding) take the
   depth of its first block if registered before its blocks, of its last block if after.
5. Parameters outside every block take their depth from their position in ``named_parameters()``
   order: before the first block -> 0, after the last block -> N+1; given a module, a task model's head
   (outside its ``base_model_prefix`` body, not tied to the input embeddings) is N+1 wherever it is
   registered (XLM-RoBERTa registers its classifier first; from names alone it gets 0), and so is a part
   named as the output (a segment ``final*`` or ``*_out``: OPT's decoder registers ``final_layer_norm`` and
   ``project_out`` before its layers), from names too; an embedding norm registered after its stack's
   blocks (BART's ``layernorm_embedding``, :data:`EMBEDDING_NORM_NAMES`) sits with that stack's embeddings.
   One that sits
   between two blocks of different stacks or stages (a downsample between stages, T5's encoder final norm, a
   VLM's projector and text embeddings) joins the neighbour whose block path shares the longer name
   prefix with it, and the *next* block on a tie: so T5's ``encoder.final_layer_norm`` gets the last
   encoder block, and LLaVA's projector and ``language_model.embed_tokens`` the first
   language-model block.

A module (rather than a list of names) says more, and :func:`layer_depths` uses it: the class of
every list element stands in for its parameter names (two sibling lists of one class are two
towers; a one-element list of a known block class is a stack). A transformers model's
``_no_split_modules`` is a hint weighed against the structure: a declared class repeated as the
elements of one list marks that list as blocks (and a list whose elements hold such blocks as
stages), which wins over a longer side list and is not merged with an equal side list that holds
none; a declared embedding, head or single layer says nothing (transformers 5.25 declares those
too). A model may declare its blocks itself (:func:`declared_layer_pattern`). Where names suffice
both paths give the same depths (checked by
``benchmarks/layer_census.py`` on every release it is run with).
"""

from __future__ import annotations

import re
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from torch import nn

from .._compat.transformers import no_split_module_names

__all__ = [
    "DECLARED_PATTERN_ATTR",
    "LayerPattern",
    "LayerPatternError",
    "NoBlockStackError",
    "SkippedBlocksError",
    "declared_layer_pattern",
    "head_parameter_names",
    "layer_depths",
    "layer_depths_with_count",
    "normalize_name",
]

LayerPattern = str | re.Pattern[str] | Callable[[str], int | None] | None

# Segments that wrappers insert into parameter names without changing the network.
_WRAPPER_SEGMENTS = frozenset({"module", "_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})
# PEFT leaf modules that carry an adapter name after them (``lora_A.default.weight``).
_PEFT_ADAPTER_SEGMENTS = frozenset(
    {
        "lora_A",
        "lora_B",
        "lora_embedding_A",
        "lora_embedding_B",
        "lora_magnitude_vector",
        "modules_to_save",
        "lora_dropout",
        "hada_w1_a",
        "hada_w1_b",
        "hada_w2_a",
        "hada_w2_b",
        "ia3_l",
        "oft_r",
        "vera_lambda_b",
        "vera_lambda_d",
    }
)
# PEFT segments that wrap the original layer without an adapter name.
_PEFT_PLAIN_SEGMENTS = frozenset({"base_layer", "original_module"})

# Inner stacks must hold at least this share of the elements that hold them for those to be stages
# (summed over the elements: MobileViT's lightest stage has 51 %, its heaviest 68 %).
_MIN_STAGE_SHARE = 0.6
# Inner lists whose name contains one of these are never a stage's blocks.
_WITHIN_BLOCK_WORDS = ("expert", "head")
# Names shown in the "no stack found" error.
_ERROR_EXAMPLES = 8


def normalize_name(name: str) -> str:
    """Drop wrapper and PEFT segments from a parameter name (and fold torch parametrizations).

    Wrappers (DDP, ``torch.compile``, FSDP1, activation checkpointing, PEFT) insert segments at
    varying depths, so depths must be computed on the unwrapped name to be wrapper-invariant.
    """
    return ".".join(_normalize_tokens(name.split(".")))


def _normalize_tokens(tokens: Sequence[str]) -> list[str]:
    out: list[str] = []
    skip_next = False
    for i, tok in enumerate(tokens):
        if skip_next:
            skip_next = False
            continue
        if tok in _WRAPPER_SEGMENTS or tok in _PEFT_PLAIN_SEGMENTS:
            continue
        if tok in _PEFT_ADAPTER_SEGMENTS:
            # Skip the adapter name after it; ``lora_embedding_A.default`` (a ParameterDict entry)
            # is itself the parameter, so keep the segment as its leaf name.
            skip_next = True
            if i + 2 >= len(tokens):
                out.append(tok)
            continue
        out.append(tok)
    # torch parametrizations (weight norm): ``conv.parametrizations.weight.original0`` is part of
    # ``conv.weight``, not a sub-module of its own.
    if len(out) >= 3 and out[-3] == "parametrizations" and out[-1].startswith("original"):
        out = [*out[:-3], out[-2]]
    # PEFT's prefix, possibly behind other wrappers (``module.base_model.model...``).
    if len(out) > 2 and out[0] == "base_model" and out[1] == "model":
        out = out[2:]
    return out


@dataclass
class _Item:
    """One parameter: its position in named_parameters order, unwrapped tokens and weight."""

    pos: int
    tokens: list[str]
    weight: int


@dataclass
class _Block:
    """One repeated block: the name prefix that identifies it and the parameters in it."""

    path: tuple[str, ...]
    items: list[_Item] = field(default_factory=list)


def layer_depths(
    model_or_names: nn.Module | Iterable[str], layer_pattern: LayerPattern = None
) -> dict[str, int]:
    """Map every parameter name to its depth (0 = before the blocks, N+1 = after them).

    ``model_or_names`` is a module or parameter names in ``named_parameters()`` order (the order
    matters: parameters outside blocks are placed by it). A module gives more than its names:
    the class of every list element (two sibling lists of one class are two towers, a one-layer
    list of a known block class is a stack), its ``_no_split_modules`` (a hint: a declared class
    repeated in one list marks blocks, which win over a longer side list) and the size of every
    parameter; and a module may declare its blocks itself, see :func:`declared_layer_pattern`.
    ``layer_pattern`` overrides everything: a regex with exactly one capture group for the
    block index, e.g. ``r"\\.layers\\.(\\d+)\\."``, or a callable ``name -> block index or None``. The
    regex's matches under one parent with the same indices are parallel lists, as in detection (XLM's
    ``\\.(\\d+)\\.`` gives its N blocks, not 4N).
    The keys of the result are the names exactly as given.
    """
    return layer_depths_with_count(model_or_names, layer_pattern)[0]


def layer_depths_with_count(
    model_or_names: nn.Module | Iterable[str], layer_pattern: LayerPattern = None
) -> tuple[dict[str, int], int]:
    """Like :func:`layer_depths`, also returning the number of blocks ``N``.

    The depths alone cannot tell N apart from N+1 (a model may have nothing after its last
    block), and LPWD's rate needs the number of levels, ``N + 2``.  A module's depths are parsed once
    while its parameter names stay the same (a recipe's check and the Trainer's build share one parse).
    """
    if isinstance(model_or_names, nn.Module):
        key = (layer_pattern, tuple(n for n, _ in model_or_names.named_parameters()))
        cached = _PARSED.get(model_or_names)
        if cached is None or cached[0] != key:
            cached = (key, _parse_depths(model_or_names, layer_pattern))
            _PARSED[model_or_names] = cached
        depths, count = cached[1]
        return dict(depths), count
    return _parse_depths(model_or_names, layer_pattern)


_PARSED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, tuple[dict[str, int], int]]] = (
    weakref.WeakKeyDictionary())
"""The last parse of each live module: ``(pattern, names) → (depths, N)``."""


def _parse_depths(
    model_or_names: nn.Module | Iterable[str], layer_pattern: LayerPattern
) -> tuple[dict[str, int], int]:
    hints = _Hints()
    heads: frozenset[str] = frozenset()
    if isinstance(model_or_names, nn.Module):
        pairs = [(n, int(p.numel())) for n, p in model_or_names.named_parameters()]
        heads = head_parameter_names(model_or_names)
        if layer_pattern is None:
            layer_pattern = declared_layer_pattern(model_or_names)
        if layer_pattern is None:
            hints = _module_hints(model_or_names)
    else:
        if isinstance(model_or_names, str):
            raise TypeError("layer_depths expects a list of parameter names or an nn.Module, not a str")
        pairs = [(n, 1) for n in model_or_names]
    names = [n for n, _ in pairs]
    if not names:
        return {}, 0
    items = [_Item(i, _normalize_tokens(n.split(".")), w) for i, (n, w) in enumerate(pairs)]

    if layer_pattern is not None:
        found = _Found([b for stack in _stacks_from_pattern(names, items, layer_pattern) for b in stack])
    else:
        found = _find_stacks(items, hints)
    if not found.blocks:
        raise NoBlockStackError(names, layer_pattern)
    depths = _assign_depths(names, items, found)
    first_block = min(it.pos for b in found.blocks for it in b.items)
    for name, item in zip(names, items, strict=True):
        # A head registered before the body (XLM-RoBERTa's classifier), or a part named as the output (OPT's
        # decoder registers final_layer_norm and project_out before its layers), runs after every block.
        if item.pos < first_block and (name in heads or _named_as_output(item.tokens)):
            depths[name] = len(found.blocks) + 1
    _place_embedding_parts_after_their_blocks(names, items, found, depths)
    return depths, len(found.blocks)


EMBEDDING_NORM_NAMES = frozenset({"layernorm_embedding", "embeddings_layer_norm"})
"""Norms of the embeddings that their models register after the blocks: BART and its family
(``layernorm_embedding``), ProphetNet (``embeddings_layer_norm``). Named, not matched: a looser match on
"embed" also takes LFM2's ``embedding_norm``, which is its final norm, and Gemma-3n's ``altup_unembed``."""


def _is_embedding_norm(tokens: Sequence[str]) -> bool:
    return any(t in EMBEDDING_NORM_NAMES for t in tokens[:-1])


def _place_embedding_parts_after_their_blocks(names: list[str], items: list[_Item], found: _Found,
                                              depths: dict[str, int]) -> None:
    """An embedding's part registered after its stack's blocks, in the module that holds the stack (BART's
    ``encoder.layernorm_embedding``, registered after ``encoder.layers`` and applied to the embeddings before
    them), sits with that stack's embeddings: 0 for the first stack, the stack's first block for a later one
    (where the decoder's ``embed_positions`` is)."""
    in_blocks = {it.pos for b in found.blocks for it in b.items}
    ends = [max(it.pos for it in b.items) for b in found.blocks]
    for name, item in zip(names, items, strict=True):
        if item.pos in in_blocks or item.pos in found.stage_of or not _is_embedding_norm(item.tokens):
            continue
        owner = next((b for i, b in reversed(list(enumerate(found.blocks)))  # the last block before it
                      if ends[i] < item.pos and 2 < len(b.path) < len(item.tokens) + 2
                      and tuple(item.tokens[:len(b.path) - 2]) == b.path[:-2]
                      and item.tokens[len(b.path) - 2] != b.path[-2]), None)
        if owner is None:
            continue
        container = owner.path[:-1]
        first = 1 + min(i for i, b in enumerate(found.blocks) if b.path[:-1] == container)
        depths[name] = 0 if first == 1 else first


def _named_as_output(tokens: Sequence[str]) -> bool:
    """A module segment that says it runs last: ``final_layer_norm``, ``project_out``."""
    return any(t.startswith("final") or t.endswith("_out") for t in tokens[:-1])


def head_parameter_names(model: nn.Module) -> frozenset[str]:
    """Names of the parameters of a task model's head: outside its body, not tied to its input embeddings.

    A transformers task model holds its body under ``base_model_prefix`` (``roberta``) and the head next
    to it; the head runs after every block wherever it is registered (XLM-RoBERTa and CamemBERT register
    ``classifier`` / ``lm_head`` before ``roberta``, which registration order alone would put at depth 0).
    An output projection tied to the input embeddings is the embedding and keeps its depth. The outermost
    module with such a body is the task model (a PEFT or DDP wrapper holds it).
    """
    for module in model.modules():
        prefix = getattr(module, "base_model_prefix", None)
        body = getattr(module, prefix, None) if isinstance(prefix, str) and prefix else None
        if not isinstance(body, nn.Module) or body is module:
            continue
        in_body = {id(p) for p in body.parameters()}
        try:
            embeddings = module.get_input_embeddings()
        except (AttributeError, NotImplementedError):
            embeddings = None
        tied = {id(p) for p in embeddings.parameters()} if isinstance(embeddings, nn.Module) else set()
        head = {id(p) for p in module.parameters()} - in_body - tied
        return frozenset(n for n, p in model.named_parameters() if id(p) in head)
    return frozenset()


# The attribute (a LayerPattern, or a method returning one) by which a model declares its blocks.
DECLARED_PATTERN_ATTR = "lpwd_layer_pattern"


def declared_layer_pattern(model: nn.Module) -> LayerPattern:
    """The blocks a model declares itself, as a layer pattern over the full names, or None.

    The model knows its forward pass better than any reading of its structure, so a declaration
    wins over detection (a user's ``layer_pattern`` still wins over it). Two forms are honoured,
    on the model or on the first sub-module that has one (a wrapped or PEFT model):

    * ``lpwd_layer_pattern``: a layer pattern (regex or callable, see :func:`layer_depths`) or a
      method returning one, applied to names relative to the declaring module;
    * timm's ``group_matcher(coarse=False)``: its ``blocks`` rules without an ordinal
      (``r'^blocks\\.(\\d+)'``,
      ``[(r'^stages\\.(\\d+)\\.blocks\\.(\\d+)', None), ...]``); every distinct tuple of captured
      indices is one block, in numeric order.
    """
    for prefix, module in model.named_modules():
        value = getattr(module, DECLARED_PATTERN_ATTR, None)
        if value is not None:
            if callable(value) and not isinstance(value, re.Pattern) and _takes_no_args(value):
                value = value()
            return _relative(prefix, value) if value is not None else None
        matcher = getattr(module, "group_matcher", None)
        if callable(matcher):
            try:
                spec = matcher(coarse=False)
            except TypeError:
                continue
            rules = _timm_block_rules(spec)
            if rules:
                return _relative(prefix, _timm_pattern(rules, model, prefix))
    return None


def _takes_no_args(fn: Callable[..., object]) -> bool:
    import inspect

    try:
        inspect.signature(fn).bind()
    except (TypeError, ValueError):
        return False
    return True


def _relative(prefix: str, pattern: str | re.Pattern[str] | Callable[[str], int | None]) -> LayerPattern:
    """A pattern written for names inside ``prefix`` applied to full names (None outside it)."""
    if not prefix:
        return pattern
    head = prefix + "."
    if callable(pattern) and not isinstance(pattern, re.Pattern):
        inner = pattern
    else:
        regex = compile_layer_pattern(pattern)

        def inner(rel: str) -> int | None:
            match = regex.search(rel)
            return int(match.group(1)) if match and match.group(1) is not None else None

    def relative(name: str) -> int | None:
        return inner(name[len(head) :]) if name.startswith(head) else None

    return relative


def _timm_block_rules(spec: object) -> list[re.Pattern[str]]:
    if not isinstance(spec, dict):
        return []
    blocks = spec.get("blocks")
    if isinstance(blocks, str):
        entries: list[object] = [(blocks, None)]
    elif isinstance(blocks, (list, tuple)):
        entries = list(blocks)
    else:
        return []
    rules = []
    for entry in entries:
        if isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] is None:
            regex = re.compile(entry[0])
            if regex.groups >= 1:
                rules.append(regex)
    return rules


def _timm_pattern(rules: list[re.Pattern[str]], model: nn.Module, prefix: str) -> Callable[[str], int | None]:
    """Rank the tuples of block indices timm's rules capture; a name's block is its tuple's rank."""
    head = prefix + "." if prefix else ""

    def key(rel: str) -> tuple[int, ...] | None:
        for regex in rules:
            match = regex.match(rel)
            if match:
                return tuple(int(g) for g in match.groups() if g is not None and g.isdigit())
        return None

    keys = {key(n[len(head) :]) for n, _ in model.named_parameters() if n.startswith(head)}
    rank = {k: i for i, k in enumerate(sorted(k for k in keys if k is not None))}

    def block_of(rel: str) -> int | None:
        k = key(rel)
        return rank.get(k) if k is not None else None

    return block_of


@dataclass
class _Hints:
    """What a module says beyond its names: element classes and where the declared blocks sit."""

    # normalized element path (``("model", "layers", "3")``) -> class name of that module
    classes: dict[tuple[str, ...], str] = field(default_factory=dict)
    # normalized element paths of declared blocks, and of the list elements that hold them (see _module_hints)
    units: frozenset[tuple[str, ...]] = frozenset()
    unit_holders: frozenset[tuple[str, ...]] = frozenset()


# What the declaration says of a list's elements: nothing, they are blocks, they hold blocks (stages).
_PLAIN, _BLOCKS, _STAGES = 0, 1, 2


def _module_hints(model: nn.Module) -> _Hints:
    """Classes of list elements (modules whose name ends in an index) and where declared blocks sit.

    transformers' ``_no_split_modules`` names the classes that must not be split across devices: blocks,
    and since 5.25 embeddings, heads and single decoder layers too. So a declared class is read as a block
    class only where the structure agrees, where two or more of it are elements of one list (repeated
    siblings): a head or an embedding named there, present once, says nothing. A list element holding such
    blocks (PVT's ``block.0``, a list of ``PvtLayer``) is a stage. See :func:`_list_kind`.
    """
    classes: dict[tuple[str, ...], str] = {}
    for name, module in model.named_modules():
        tokens = name.split(".")
        if tokens[-1].isdigit():
            classes.setdefault(tuple(_normalize_tokens(tokens)), type(module).__name__)
    declared = no_split_module_names(model)
    per_list = Counter((path[:-1], cls) for path, cls in classes.items() if cls in declared)
    repeated = {cls for (_, cls), count in per_list.items() if count >= 2}
    units = {path for path, cls in classes.items() if cls in repeated}
    holders = {path[:i] for path in units for i in range(1, len(path)) if path[i - 1].isdigit()}
    return _Hints(classes, frozenset(units), frozenset(holders))


def _list_kind(key: tuple[str, ...], elems: dict[int, list[_Item]], hints: _Hints) -> int:
    """_STAGES if an element of the list ``key`` holds declared blocks, _BLOCKS if one is one, else _PLAIN."""
    paths = [(*key, str(i)) for i in elems]
    if any(p in hints.unit_holders for p in paths):
        return _STAGES
    return _BLOCKS if any(p in hints.units for p in paths) else _PLAIN


def compile_layer_pattern(
    pattern: str | re.Pattern[str], field_name: str = "layer_pattern"
) -> re.Pattern[str]:
    """Compile a user's layer pattern: a regex with exactly one capture group, the block index.

    The one validator of patterns for every entry point (``layer_depths``, ``LPWDConfig``, the Trainer
    flag, the CLI): ``field_name`` names where the pattern came from, so the error points at the fix.
    """
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValueError(
            f"{field_name}={pattern!r} is not a valid regular expression ({exc}); pass a regex with "
            r"one capture group for the block index, e.g. '\.layers\.(\d+)\.'"
        ) from None
    if regex.groups != 1:
        raise ValueError(
            f"{field_name}={pattern!r} has {regex.groups} capture groups; it needs exactly one, the "
            r"block index, e.g. '\.layers\.(\d+)\.' (use (?:...) for other groups)"
        )
    return regex



def _stacks_from_pattern(names: list[str], items: list[_Item], pattern: LayerPattern) -> list[list[_Block]]:
    """Group parameters into blocks with the user's regex or callable instead of detection."""
    keyed: dict[tuple[str, ...], dict[int, _Block]] = {}
    if callable(pattern) and not isinstance(pattern, re.Pattern):
        for name, item in zip(names, items, strict=True):
            index = pattern(name)
            if index is None:
                continue
            if isinstance(index, bool) or not isinstance(index, int):
                raise ValueError(
                    f"layer_pattern callable returned {index!r} for {name!r}; return an int or None"
                )
            stack = keyed.setdefault((), {})
            stack.setdefault(index, _Block(("#", str(index)))).items.append(item)
    else:
        regex = compile_layer_pattern(pattern)  # type: ignore[arg-type]
        prefixes: set[str] = set()
        unmatched: list[str] = []
        for name, item in zip(names, items, strict=True):
            match = regex.search(name)
            if match is None or match.group(1) is None:
                if match is None:
                    unmatched.append(name)
                continue
            try:
                index = int(match.group(1))
            except ValueError as exc:
                raise ValueError(
                    f"layer_pattern {regex.pattern!r} captured {match.group(1)!r} in {name!r}, which is not "
                    r"an integer; the capture group must match the block index only, e.g. (\d+)"
                ) from exc
            container = tuple(_normalize_tokens(name[: match.start(1)].rstrip(".").split(".")))
            stack = keyed.setdefault(container, {})
            stack.setdefault(index, _Block((*container, str(index)))).items.append(item)
            prefixes.add(name[: match.start(1)])
        _refuse_skipped_blocks(names, unmatched, regex, prefixes)
    return [[stack[i] for i in sorted(stack)] for stack in _merge_parallel(keyed)]


def _refuse_skipped_blocks(names: list[str], unmatched: list[str], regex: re.Pattern,
                           prefixes: set[str]) -> None:
    """A pattern matched some blocks of a stack and not others (``\\.layers\\.(0)\\.``, or ``([0-9])`` on 12
    layers): the skipped ones would sit outside the stack, at the embeddings' or the head's depth."""
    for name in unmatched:
        for prefix in prefixes:
            if name.startswith(prefix) and name[len(prefix):].split(".", 1)[0].isdigit():
                raise SkippedBlocksError(names, regex, prefix, name)


def _merge_parallel(keyed: dict[tuple[str, ...], dict[int, _Block]]) -> list[dict[int, _Block]]:
    """Sibling containers a pattern matched with the same indices and different contents are one stack
    (XLM's ``attentions.i`` / ``ffns.i`` / ``layer_norm1.i``: block i is their union), as detection reads
    them; composite siblings with the same contents are two towers, and containers under different parents
    (T5's encoder, decoder) chain."""
    merged: list[tuple[tuple[str, ...], set[frozenset[str]], dict[int, _Block]]] = []
    for container, stack in keyed.items():
        first = stack[min(stack)]
        contents = frozenset(".".join(it.tokens[len(first.path):]) for it in first.items)
        composite = any(len(it.tokens) - len(first.path) > 1 for it in first.items)  # not a bare layer
        for parent, seen, into in merged:
            if parent == container[:-1] and set(into) == set(stack) and not (composite and contents in seen):
                seen.add(contents)
                for index, block in stack.items():
                    into[index].items.extend(block.items)
                break
        else:
            copied = {i: _Block(b.path, list(b.items)) for i, b in stack.items()}
            merged.append((container[:-1], {contents}, copied))
    for _, _, stack in merged:
        for block in stack.values():
            block.items.sort(key=lambda it: it.pos)
    return [stack for _, _, stack in merged]


@dataclass
class _Group:
    """Sibling lists of one parent read as one stack: element i is the union of their i-th elements.

    XLM keeps layer i in ``attentions.i``, ``layer_norm1.i``, ``ffns.i`` and ``layer_norm2.i``;
    PVT keeps stage i in ``patch_embeddings.i``, ``block.i`` and ``layer_norm.i``. A plain list is
    a group of one.
    """

    keys: list[tuple[str, ...]]
    elems: dict[int, list[_Item]]
    # Per composite list: the parameter names inside its first element (its "class", by names).
    signatures: list[frozenset[str]]
    # The highest _list_kind of its composite lists (None: no composite list yet).
    kind: int | None = None

    @property
    def parent(self) -> tuple[str, ...]:
        return self.keys[0][:-1]

    def weight(self) -> int:
        return sum(item.weight for group in self.elems.values() for item in group)


def _containers(items: list[_Item], base: int) -> dict[tuple[str, ...], dict[int, list[_Item]]]:
    """The outermost lists at or below token ``base``: prefix -> index -> items."""
    containers: dict[tuple[str, ...], dict[int, list[_Item]]] = {}
    for item in items:
        for i in range(base, len(item.tokens) - 1):
            if item.tokens[i].isdigit():
                by_index = containers.setdefault(tuple(item.tokens[:i]), {})
                by_index.setdefault(int(item.tokens[i]), []).append(item)
                break
    return containers


def _signature(elems: dict[int, list[_Item]], key_len: int, hints: _Hints) -> frozenset[str]:
    """What kind of module a list holds: its first element's class if known, else its parameter names."""
    first = elems[min(elems)]
    cls = hints.classes.get(tuple(first[0].tokens[: key_len + 1]))
    if cls is not None:
        return frozenset({"class:" + cls})
    return frozenset(".".join(item.tokens[key_len + 1 :]) for item in elems[min(elems)])


def _groups(items: list[_Item], base: int, hints: _Hints) -> list[_Group]:
    """Lists at ``base``, sibling lists of equal length and different contents merged (parallel lists).

    Two composite siblings with the same contents are two towers of the same block class, not the
    halves of one block, so they stay apart, and so do a list of declared blocks and one holding none
    (a side list of the same length: Qwen3-VL's mergers next to its vision blocks). Two lists of
    declared blocks (Janus's ``block.j``/``attn.j``) are parallel, and so are the siblings of a list of
    stages (PVT's and GLPN's ``patch_embeddings.i`` next to ``block.i``, declared or not). Bare lists
    (``layer_norm1.i``, CLIPSeg's ``reduces.i``) join any equal sibling.
    """
    groups: list[_Group] = []
    for key, elems in _containers(items, base).items():
        composite = _is_composite(elems, len(key))
        if not composite and _mixed_classes(key, elems, hints):
            continue  # a pipeline (ConvNeXt's downsampling_layer: norm then conv), not one part of each block
        signature = _signature(elems, len(key), hints)
        kind = _list_kind(key, elems, hints)
        for group in groups:
            if group.parent == key[:-1] and set(group.elems) == set(elems) and not (
                composite
                and group.kind is not None
                and (signature in group.signatures or {kind, group.kind} == {_PLAIN, _BLOCKS})
            ):
                group.keys.append(key)
                for index, its in elems.items():
                    group.elems[index].extend(its)
                if composite:
                    group.signatures.append(signature)
                    group.kind = max(kind, group.kind if group.kind is not None else _PLAIN)
                break
        else:
            groups.append(
                _Group([key], {i: list(its) for i, its in elems.items()}, [signature] if composite else [],
                       kind if composite else None)
            )
    return [g for g in groups if g.signatures and _union_composite(g)]


def _mixed_classes(key: tuple[str, ...], elems: dict[int, list[_Item]], hints: _Hints) -> bool:
    """The elements of the list ``key`` are modules of different classes (known from a module only)."""
    return len({hints.classes.get((*key, str(i))) for i in elems} - {None}) > 1


def _union_composite(group: _Group) -> bool:
    """Some element has parameters in two or more sub-modules (see :func:`_is_composite`)."""
    cut = len(group.parent)
    for its in group.elems.values():
        places = {(it.tokens[cut], *it.tokens[cut + 2 : -1]) for it in its}
        if len(places) >= 2:
            return True
    return False


def _drop_side_lists(groups: list[_Group]) -> list[_Group]:
    """Of the stacks under one parent only the longest are applied one after another.

    A shorter list next to a stack (Qwen3-VL's three ``deepstack_merger_list`` mergers next to its
    27 vision blocks, per-level projections next to a backbone's blocks) feeds other layers: a side
    list, whose parameters then take the depth of where they sit. When the model declares unit
    classes (``_no_split_modules``), lists that are or hold declared blocks come first.
    """
    def rank(g: _Group) -> tuple[bool, int]:
        return bool(g.kind), len(g.elems)

    best: dict[tuple[str, ...], tuple[bool, int]] = {}
    for g in groups:
        best[g.parent] = max(best.get(g.parent, (False, 0)), rank(g))
    return [g for g in groups if rank(g) == best[g.parent]]


@dataclass
class _Found:
    """What block detection found: the blocks in order, and each stage's own parameters."""

    blocks: list[_Block]
    # position of a stage's own parameter (a downsample, a patch embedding) -> that stage's blocks
    stage_of: dict[int, list[_Block]] = field(default_factory=dict)


def _find_stacks(items: list[_Item], hints: _Hints) -> _Found:
    """Find the outermost stacks of blocks among ``items``, stages expanded into their blocks.

    Stacks are chained in order of first appearance, blocks of one stack in index order.
    """
    groups = _drop_side_lists(_groups(items, 0, hints))
    repeated = [g for g in groups if len(g.elems) >= 2]
    if repeated:
        # A one-element list is a stack when its element looks like another stack's blocks
        # (Canine's one-layer character encoders around its 12-layer encoder); otherwise it is a
        # side module (``convs.0``). With no repeated stack at all, it is a one-layer model.
        known = {s for g in repeated for s in g.signatures}
        groups = [g for g in groups if len(g.elems) >= 2 or known & set(g.signatures)]
    found = _Found([])
    for group in groups:
        if not _expand_stages(group, found, hints):
            found.blocks.extend(_Block((*group.keys[0], str(i)), group.elems[i]) for i in sorted(group.elems))
    return found


def _expand_stages(group: _Group, found: _Found, hints: _Hints) -> bool:
    """If the elements of ``group`` are stages, add their blocks to ``found`` and return True.

    An element is a stage if it holds stacks of its own (at any depth: MobileViT's
    ``layer.4.transformer.layer.<j>``; parallel lists too: Janus's ``block.<j>``/``attn.<j>``; a
    one-element list counts), alike modules not named for experts or heads, with at least
    ``_MIN_STAGE_SHARE`` of the element's weight (the rest is the stage's downsample or patch
    embedding). Elements without such stacks may sit between stages if they differ from the
    stages (SwiftFormer's ``network`` alternates stages and downsamples). The stages must hold
    more blocks than there are stages, or a stage is indistinguishable from a block. Only one
    level is expanded: a block's own sub-lists (a bottleneck's convs) are never blocks.
    """
    element_len = len(group.parent) + 2
    inner: dict[int, list[_Group]] = {}
    inner_weight = staged_weight = 0
    for index, its in group.elems.items():
        stacks = [
            g
            for g in _groups(its, element_len, hints)
            if not any(_is_within_block_list(k[-1]) for k in g.keys) and _alike_group(g)
        ]
        if not stacks:
            continue
        in_stack = {it.pos for g in stacks for group_its in g.elems.values() for it in group_its}
        if any("expert" in tok.lower() for it in its if it.pos not in in_stack for tok in it.tokens):
            return False  # MoE experts beside the inner lists: a decoder layer, not a stage
        inner[index] = stacks
        inner_weight += sum(g.weight() for g in stacks)
        staged_weight += sum(it.weight for it in its)
    if not inner or sum(len(g.elems) for gs in inner.values() for g in gs) <= len(inner):
        return False
    if inner_weight < _MIN_STAGE_SHARE * staged_weight:
        return False
    plain = [i for i in group.elems if i not in inner]
    if plain:
        if len(plain) > len(inner):
            return False
        stage_sigs = [_element_signature(group.elems[i], element_len) for i in inner]
        for i in plain:
            mine = _element_signature(group.elems[i], element_len)
            if any(_overlap(mine, other) for other in stage_sigs):
                return False  # a block like the stages, not a downsample between them
    for index in sorted(group.elems):
        if index not in inner:
            continue  # a downsample between stages: placed by position
        blocks = [_Block((*g.keys[0], str(j)), g.elems[j]) for g in inner[index] for j in sorted(g.elems)]
        in_block = {it.pos for b in blocks for it in b.items}
        for it in group.elems[index]:
            if it.pos not in in_block:
                found.stage_of[it.pos] = blocks
        found.blocks.extend(blocks)
    return True


def _element_signature(its: list[_Item], element_len: int) -> frozenset[str]:
    return frozenset(".".join((it.tokens[element_len - 2], *it.tokens[element_len:])) for it in its)


def _overlap(a: frozenset[str], b: frozenset[str]) -> bool:
    return len(a & b) * 2 >= max(len(a), len(b))


def _alike_group(group: _Group) -> bool:
    """True if the elements are repeated modules: most have a twin sharing most parameter names.

    Blocks of a stage repeat (possibly alternating, as LeViT's attention and MLP residual layers);
    the sub-layers of a T5 block (``layer.0`` self-attention, ``layer.1`` feed-forward) are a
    list of different modules and must not be read as blocks.
    """
    cut = len(group.parent) + 2
    suffixes = [_element_signature(its, cut) for its in group.elems.values()]
    if len(suffixes) == 1:
        return True
    twinned = sum(
        1
        for i, mine in enumerate(suffixes)
        if any(j != i and _overlap(mine, other) for j, other in enumerate(suffixes))
    )
    return twinned * 2 >= len(suffixes)


def _is_composite(elems: dict[int, list[_Item]], container_len: int) -> bool:
    """True if some element is a module built of several parametrised parts (a block).

    A list of bare layers (``heads.0.weight``) or of thin wrappers around one layer
    (``biases.2.relative_attention_bias.weight``) is a side list, never a stack of blocks: every
    block has parameters in at least two places (attention and MLP, a conv and its norm).
    """
    for group in elems.values():
        places = {tuple(item.tokens[container_len + 1 : -1]) for item in group}
        if len(places) >= 2:
            return True
    return False


def _is_within_block_list(name: str) -> bool:
    """Lists named for experts or heads live inside a block (MoE experts, per-head projections).

    This is a naming convention shared across architectures, not a per-model rule: it tells a
    block's list of experts (which holds most of the block) from a stage's list of blocks.
    """
    lowered = name.lower()
    return any(word in lowered for word in _WITHIN_BLOCK_WORDS)


def _assign_depths(names: list[str], items: list[_Item], found: _Found) -> dict[str, int]:
    """Number the blocks 1..N and place every other parameter by its position among them.

    A stage's own parameter stays with its stage: before the stage's first block (PVT registers
    every stage's patch embedding before any block) it takes that block's depth, after the last
    its depth, in between the depth its neighbours give, clamped to the stage.
    """
    blocks = found.blocks
    depth_of_pos: dict[int, int] = {}
    block_of_pos: dict[int, _Block] = {}
    for depth, block in enumerate(blocks, start=1):
        for item in block.items:
            depth_of_pos[item.pos] = depth
            block_of_pos[item.pos] = block
    n_blocks = len(blocks)
    block_positions = sorted(depth_of_pos)
    depth_of = {id(block): depth for depth, block in enumerate(blocks, start=1)}

    def _between(item: _Item, before: int | None, after: int | None) -> int:
        """Depth of a parameter between two blocks: the neighbour sharing the longer name prefix."""
        assert before is not None and after is not None
        b_prev, b_next = block_of_pos[before], block_of_pos[after]
        if b_prev is not b_next and _shared_prefix(item.tokens, b_prev.path) <= _shared_prefix(
            item.tokens, b_next.path
        ):
            return depth_of_pos[after]
        return depth_of_pos[before]

    # For each position, the nearest block parameter before and after it (a linear sweep).
    prev_block: list[int | None] = [None] * len(items)
    last: int | None = None
    for pos in range(len(items)):
        if pos in depth_of_pos:
            last = pos
        prev_block[pos] = last
    next_block: list[int | None] = [None] * len(items)
    nxt: int | None = None
    for pos in range(len(items) - 1, -1, -1):
        if pos in depth_of_pos:
            nxt = pos
        next_block[pos] = nxt

    depths: dict[str, int] = {}
    first_pos, last_pos = block_positions[0], block_positions[-1]
    for item, name in zip(items, names, strict=True):
        pos = item.pos
        if pos in depth_of_pos:
            depths[name] = depth_of_pos[pos]
        elif pos in found.stage_of:
            stage = found.stage_of[pos]
            lo, hi = depth_of[id(stage[0])], depth_of[id(stage[-1])]
            start = min(it.pos for it in stage[0].items)
            end = max(it.pos for it in stage[-1].items)
            if pos < start:
                depths[name] = lo
            elif pos > end:
                depths[name] = hi
            else:
                depths[name] = min(max(_between(item, prev_block[pos], next_block[pos]), lo), hi)
        elif pos < first_pos:
            depths[name] = 0
        elif pos > last_pos:
            depths[name] = n_blocks + 1
        else:
            depths[name] = _between(item, prev_block[pos], next_block[pos])
    return depths


def _shared_prefix(tokens: Sequence[str], path: Sequence[str]) -> int:
    n = 0
    for a, b in zip(tokens, path, strict=False):
        if a != b:
            break
        n += 1
    return n


class LayerPatternError(ValueError):
    """The blocks cannot be found as asked; :meth:`describe` says it with the label of the caller's option
    (the Trainer's ``--lpwd_layer_pattern``, where a callable cannot be given)."""

    def describe(self, label: str = "layer_pattern", command_line: bool = False) -> str:
        raise NotImplementedError


class SkippedBlocksError(LayerPatternError):
    """``layer_pattern`` matched some blocks of a stack and skipped others."""

    def __init__(self, names: list[str], pattern: re.Pattern, prefix: str, skipped: str) -> None:
        self.names, self.pattern, self.prefix, self.skipped = names, pattern, prefix, skipped
        super().__init__(self.describe())

    def describe(self, label: str = "layer_pattern", command_line: bool = False) -> str:
        given = f"'{self.pattern.pattern}'" if command_line else repr(self.pattern.pattern)
        return (
            f"{label} {given} matched blocks of {self.prefix!r} but not {self.skipped!r}, which would sit "
            f"outside the stack, at the embeddings' or the head's depth. Pass a {label} whose capture group "
            "matches every block index, e.g. (\\d+)."
        )


class NoBlockStackError(LayerPatternError):
    """No stack of repeated blocks in the parameter names, or none that ``layer_pattern`` matched; keeps the
    names and the pattern for :meth:`describe`."""

    def __init__(self, names: list[str], pattern: LayerPattern) -> None:
        self.names, self.pattern = names, pattern
        super().__init__(self.describe())

    def describe(self, label: str = "layer_pattern", command_line: bool = False) -> str:
        names = self.names
        shown = ", ".join(repr(n) for n in names[:_ERROR_EXAMPLES])
        more = f" (and {len(names) - _ERROR_EXAMPLES} more)" if len(names) > _ERROR_EXAMPLES else ""
        if self.pattern is not None:
            given = getattr(self.pattern, "pattern", self.pattern)
            given = f"'{given}'" if command_line and isinstance(given, str) else repr(given)
            return (
                f"{label} {given} matched no parameter name. "
                f"Names: {shown}{more}. Pass a {label} whose capture group matches the block index."
            )
        regex = "'\\.blocks\\.(\\d+)\\.' (a regex with one capture group for the block index)"
        example = (f"{label} {regex}" if command_line
                   else f"{label}=r{regex} or a callable name -> block index or None")
        return (
            "could not find a stack of repeated blocks (a name segment followed by an integer index, such as "
            f"'layers.3.') in the parameter names: {shown}{more}. Pass {example}."
        )
