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
   ``model.layers.3.mlp.up_proj.weight``). The outermost containers with at least two elements
   (one, if nothing else qualifies: a one-layer model) whose elements are composite -- parameters
   in two or more sub-modules, so a ``ModuleList`` of bare ``Linear``/``Embedding`` layers or
   one-layer wrappers is not a stack -- are the stacks. Lists inside a block (T5's
   ``block.3.layer.0``, MoE experts, per-head lists) are claimed by the outer block.
3. Stacks are chained in order of first appearance in ``named_parameters()``; the blocks of one
   stack are numbered in index order, which is forward order.
4. Hierarchical models (Swin ``encoder.layers.0.blocks.1``, ConvNeXt ``encoder.stages.2.layers.0``,
   Funnel ``encoder.blocks.0.1``) have *stages*: if every element of a stack holds, as a direct
   child, a list of repeated composite modules (most of them have a twin with the same parameter
   names, unlike T5's self-attention/feed-forward sub-layers) with most of the element's
   parameters, and that list is not named for experts or heads (MoE experts can hold most of a
   decoder layer), the inner lists' elements are the blocks. One level only.
5. Parameters outside every block take their depth from their position in ``named_parameters()``
   order: before the first block -> 0, after the last block -> N+1. One that sits between two
   blocks of different stacks or stages (a stage's downsample, T5's encoder final norm, a VLM's
   projector and text embeddings) joins the neighbour whose block path shares the longer name
   prefix with it, and the *next* block on a tie: so Swin's ``layers.0.downsample`` gets stage 0's
   last block depth, ConvNeXt's ``stages.1.downsampling_layer`` stage 1's first block, T5's
   ``encoder.final_layer_norm`` the last encoder block, and LLaVA's projector and
   ``language_model.embed_tokens`` the first language-model block.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from torch import nn

__all__ = ["layer_depths", "layer_depths_with_count", "normalize_name", "LayerPattern"]

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

# An inner stack must hold at least this share of an element for the element to be a stage. With
# names only the weight is the tensor count, where a decoder layer with two attention sub-layers
# in a list (LongCat-Flash) reaches about half: 0.6 keeps such a layer a block.
_MIN_STAGE_SHARE = 0.6
# Inner lists whose name contains one of these are never a stage's blocks.
_WITHIN_BLOCK_WORDS = ("expert", "head")
# Names shown in the "no stack found" error.
_ERROR_EXAMPLES = 8


def normalize_name(name: str) -> str:
    """Drop wrapper and PEFT segments from a parameter name.

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


def layer_depths(names_or_model: nn.Module | Iterable[str], pattern: LayerPattern = None) -> dict[str, int]:
    """Map every parameter name to its depth (0 = before the blocks, N+1 = after them).

    ``names_or_model`` is a module (its ``named_parameters()`` are used, with ``numel`` as the
    size of each parameter) or parameter names in ``named_parameters()`` order; the order
    matters because parameters outside blocks are placed by it. ``pattern`` overrides block
    detection: a regex with exactly one capture group for the block index, e.g.
    ``r"\\.layers\\.(\\d+)\\."``, or a callable ``name -> block index or None``. The keys of the
    result are the names exactly as given.
    """
    return layer_depths_with_count(names_or_model, pattern)[0]


def layer_depths_with_count(
    names_or_model: nn.Module | Iterable[str], pattern: LayerPattern = None
) -> tuple[dict[str, int], int]:
    """Like :func:`layer_depths`, also returning the number of blocks ``N``.

    The depths alone cannot tell N apart from N+1 (a model may have nothing after its last
    block), and LPWD's rate needs the number of levels, ``N + 2``.
    """
    if isinstance(names_or_model, nn.Module):
        pairs = [(n, int(p.numel())) for n, p in names_or_model.named_parameters()]
    else:
        if isinstance(names_or_model, str):
            raise TypeError("layer_depths expects a list of parameter names or an nn.Module, not a str")
        pairs = [(n, 1) for n in names_or_model]
    names = [n for n, _ in pairs]
    if not names:
        return {}, 0
    items = [_Item(i, _normalize_tokens(n.split(".")), w) for i, (n, w) in enumerate(pairs)]

    if pattern is not None:
        stacks = _stacks_from_pattern(names, items, pattern)
    else:
        stacks = _find_stacks(items)
    blocks = [b for stack in stacks for b in stack]
    if not blocks:
        raise ValueError(_no_stack_message(names, pattern))
    return _assign_depths(names, items, blocks), len(blocks)


def _compile_pattern(pattern: str | re.Pattern[str]) -> re.Pattern[str]:
    """Compile a user's layer pattern, turning every misuse into an actionable ValueError."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValueError(
            f"layer_pattern {pattern!r} is not a valid regular expression ({exc}); pass a regex with "
            r"one capture group for the block index, e.g. layer_pattern=r'\.layers\.(\d+)\.'"
        ) from exc
    if regex.groups != 1:
        raise ValueError(
            f"layer_pattern {pattern!r} has {regex.groups} capture groups but needs exactly one, for the "
            r"block index, e.g. layer_pattern=r'\.layers\.(\d+)\.' (use (?:...) for other groups)"
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
                raise ValueError(f"layer_pattern callable returned {index!r} for {name!r}; return an int or None")
            stack = keyed.setdefault((), {})
            stack.setdefault(index, _Block(("#", str(index)))).items.append(item)
    else:
        regex = _compile_pattern(pattern)  # type: ignore[arg-type]
        for name, item in zip(names, items, strict=True):
            match = regex.search(name)
            if match is None or match.group(1) is None:
                continue
            try:
                index = int(match.group(1))
            except ValueError as exc:
                raise ValueError(
                    f"layer_pattern {regex.pattern!r} captured {match.group(1)!r} in {name!r}, which is not "
                    r"an integer; the capture group must match the block index only, e.g. (\d+)"
                ) from exc
            container = tuple(_normalize_tokens(name[: match.start(1)].split(".")))
            stack = keyed.setdefault(container, {})
            stack.setdefault(index, _Block((*container, str(index)))).items.append(item)
    return [[stack[i] for i in sorted(stack)] for stack in keyed.values()]


def _find_stacks(items: list[_Item]) -> list[list[_Block]]:
    """Find the outermost stacks of blocks among ``items``.

    Returns the stacks in order of first appearance, each a list of blocks in index order.
    """
    containers: dict[tuple[str, ...], dict[int, list[_Item]]] = {}
    for item in items:
        for i in range(len(item.tokens) - 1):
            if item.tokens[i].isdigit():
                key = tuple(item.tokens[:i])
                containers.setdefault(key, {}).setdefault(int(item.tokens[i]), []).append(item)
                break

    candidates = {key: elems for key, elems in containers.items() if _is_composite(elems, len(key))}
    # A one-element list is usually a side module (``convs.0``); it is a stack only when nothing
    # else is (a one-layer model).
    repeated = {key: elems for key, elems in candidates.items() if len(elems) >= 2}
    candidates = repeated or candidates
    if not candidates:
        return []

    stacks: list[list[_Block]] = []
    for key, elems in candidates.items():
        inner = _stage_blocks(key, elems)
        if inner is not None:
            stacks.append(inner)
        else:
            stacks.append([_Block((*key, str(i)), elems[i]) for i in sorted(elems)])
    return stacks


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


def _weight(elems: dict[int, list[_Item]]) -> int:
    return sum(item.weight for group in elems.values() for item in group)


def _stage_blocks(key: tuple[str, ...], elems: dict[int, list[_Item]]) -> list[_Block] | None:
    """If the stack at ``key`` is a list of stages, return the blocks inside its stages.

    Each element must hold a direct child stack (``stage.blocks.<i>`` or ``stage.<i>``) of
    composite, repeated modules, not named for experts or heads, with at least
    ``_MIN_STAGE_SHARE`` of the element's weight (the rest is the stage's downsample or patch
    embedding). At least one stage must have two or more blocks, or a stage is indistinguishable
    from a block. Only one level is expanded: a block's own sub-lists (a bottleneck's convs) are
    never blocks.
    """
    element_len = len(key) + 1
    blocks: list[_Block] = []
    more_blocks_than_stages = False
    for index in sorted(elems):
        group = elems[index]
        inner = _direct_inner_stack(group, element_len)
        if inner is None:
            return None
        inner_key, inner_elems = inner
        if _weight(inner_elems) < _MIN_STAGE_SHARE * sum(it.weight for it in group):
            return None
        if len(inner_elems) >= 2:
            more_blocks_than_stages = True
        # One level only: a block's own sub-lists (a bottleneck's convs) are not blocks.
        blocks.extend(_Block((*inner_key, str(i)), inner_elems[i]) for i in sorted(inner_elems))
    return blocks if more_blocks_than_stages else None


def _direct_inner_stack(
    group: list[_Item], element_len: int
) -> tuple[tuple[str, ...], dict[int, list[_Item]]] | None:
    """The heaviest composite stack directly inside one element (``elem.<i>`` or ``elem.<name>.<i>``)."""
    containers: dict[tuple[str, ...], dict[int, list[_Item]]] = {}
    for item in group:
        for i in (element_len, element_len + 1):
            if i < len(item.tokens) - 1 and item.tokens[i].isdigit():
                key = tuple(item.tokens[:i])
                containers.setdefault(key, {}).setdefault(int(item.tokens[i]), []).append(item)
                break
    composite = [
        (k, e)
        for k, e in containers.items()
        if _is_composite(e, len(k)) and _alike(e, len(k)) and not _is_within_block_list(k[-1] if k else "")
    ]
    if not composite:
        return None
    return max(composite, key=lambda ke: _weight(ke[1]))


def _alike(elems: dict[int, list[_Item]], container_len: int) -> bool:
    """True if the elements are repeated modules: most have a twin sharing most parameter names.

    Blocks of a stage repeat (possibly alternating, as LeViT's attention and MLP residual layers);
    the sub-layers of a T5 block (``layer.0`` self-attention, ``layer.1`` feed-forward) are a
    list of different modules and must not be read as blocks.
    """
    suffixes = [{".".join(it.tokens[container_len + 1 :]) for it in group} for group in elems.values()]
    if len(suffixes) == 1:
        return True
    twinned = 0
    for i, mine in enumerate(suffixes):
        if any(
            j != i and len(mine & other) * 2 >= max(len(mine), len(other)) for j, other in enumerate(suffixes)
        ):
            twinned += 1
    return twinned * 2 >= len(suffixes)


def _is_within_block_list(name: str) -> bool:
    """Lists named for experts or heads live inside a block (MoE experts, per-head projections).

    This is a naming convention shared across architectures, not a per-model rule: it tells a
    block's list of experts (which holds most of the block) from a stage's list of blocks.
    """
    lowered = name.lower()
    return any(word in lowered for word in _WITHIN_BLOCK_WORDS)


def _assign_depths(names: list[str], items: list[_Item], blocks: list[_Block]) -> dict[str, int]:
    """Number the blocks 1..N and place every other parameter by its position among them."""
    depth_of_pos: dict[int, int] = {}
    block_of_pos: dict[int, _Block] = {}
    for depth, block in enumerate(blocks, start=1):
        for item in block.items:
            depth_of_pos[item.pos] = depth
            block_of_pos[item.pos] = block
    n_blocks = len(blocks)
    block_positions = sorted(depth_of_pos)

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
        elif pos < first_pos:
            depths[name] = 0
        elif pos > last_pos:
            depths[name] = n_blocks + 1
        else:
            before, after = prev_block[pos], next_block[pos]
            assert before is not None and after is not None
            b_prev, b_next = block_of_pos[before], block_of_pos[after]
            if b_prev is b_next:
                depths[name] = depth_of_pos[before]
            elif _shared_prefix(item.tokens, b_prev.path) > _shared_prefix(item.tokens, b_next.path):
                depths[name] = depth_of_pos[before]
            else:
                depths[name] = depth_of_pos[after]
    return depths


def _shared_prefix(tokens: Sequence[str], path: Sequence[str]) -> int:
    n = 0
    for a, b in zip(tokens, path, strict=False):
        if a != b:
            break
        n += 1
    return n


def _no_stack_message(names: list[str], pattern: LayerPattern) -> str:
    shown = ", ".join(repr(n) for n in names[:_ERROR_EXAMPLES])
    more = f" (and {len(names) - _ERROR_EXAMPLES} more)" if len(names) > _ERROR_EXAMPLES else ""
    if pattern is not None:
        return (
            f"layer_pattern {getattr(pattern, 'pattern', pattern)!r} matched no parameter name. "
            f"Names: {shown}{more}. Pass a layer_pattern whose capture group matches the block index."
        )
    return (
        "could not find a stack of repeated blocks (a name segment followed by an integer index, such as "
        f"'layers.3.') in the parameter names: {shown}{more}. Pass layer_pattern=r'\\.blocks\\.(\\d+)\\.' "
        "(a regex with one capture group for the block index) or a callable name -> block index or None."
    )
