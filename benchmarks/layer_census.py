"""Coverage census for ``hf_lpwd.layers.layer_depths`` over the transformers model zoo.

Why: the depth parser is one general algorithm over parameter names, so the only honest
measure of it is to run it on every architecture transformers ships and compare it with an
independent oracle that reads the *module structure* instead of names. Every model is built
on the meta device from its default config, so no weights are allocated or downloaded.

The oracle (see the comment above ``_OStack``) reads modules and tensor shapes, never names: lists
of composite, repeated modules whose outputs feed the next element are stacks; sibling lists of
equal length are one stack; elements holding stacks of their own are stages. Stacks are chained in
order of first appearance and a parameter shared by several blocks belongs to the first.

The contract (C1-C7 of issue 13) is checked separately for the module path (``layer_depths(model)``
on the real module) and the name path (``layer_depths(names)``): the oracle's N blocks get depths
1..N in order (one depth per block), parameters before the first block get 0 (but a task model's head,
outside its ``base_model_prefix`` body, and a part named ``final*`` / ``*_out``: N+1), after the last N+1
(but an embedding norm, BART's ``layernorm_embedding``: its stack's first block, 0 for the first stack),
a parameter between blocks (LLaVA's projector and text embeddings between the vision and the text
stack, T5's encoder final norm between encoder and decoder) the depth of the block just before it or
just after it in registration order, a stage's own parameters stay within one of its blocks' depths
+- 1, nothing leaves [0, N+1].

Usage::

    python benchmarks/layer_census.py [--tasks causal_lm,image_classification] [--limit 20]
        [--models llama,t5] [--timeout 60] [--cache FILE] [--out benchmarks/results/layer_census.md]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import signal
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from hf_lpwd._compat.transformers import model_from_config
from hf_lpwd.layers import layer_depths

TASKS = {
    "causal_lm": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "sequence_classification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "masked_lm": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "seq2seq_lm": "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "image_classification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    "image_text_to_text": "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
    "semantic_segmentation": "MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES",
    "depth_estimation": "MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES",
    "mask_generation": "MODEL_FOR_MASK_GENERATION_MAPPING_NAMES",
    "zero_shot_image_classification": "MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    "heads": "EXTRA_HEADS",
}
# Task heads no auto mapping lists, whose modules transformers 5.25 added to ``_no_split_modules``
# (a decoder with side lists, a text decoder): the census must see what a user would train.
EXTRA_HEADS = {
    "clipseg": "CLIPSegForImageSegmentation",
    "blip": "BlipForQuestionAnswering",
    "blip_text_model": "BlipTextLMHeadModel",
}
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "layer_census.md"


@dataclass
class Built:
    """What the census keeps of one built model (small enough to cache between runs)."""

    names: list[str]
    numels: list[int]
    oracle: OracleResult
    # layer_depths(model) on the real module (classes, _no_split_modules), or its error
    module_depths: dict[str, int] | str


@dataclass
class Outcome:
    task: str
    model_type: str
    cls_name: str
    status: str  # "pass", "fail", "skip": both paths
    reason: str = ""
    names_ok: bool = False
    module_ok: bool = False
    agree: bool = False
    n_blocks: int = 0
    n_params: int = 0
    # head parameters registered before the first block (N+1 from a module, 0 from names)
    heads_first: int = 0
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Oracle: blocks from module structure and tensor shapes (shares no code or rule with hf_lpwd.layers).
#
# It never reads a parameter name, a ``_no_split_modules`` or a class name except to tell experts
# and per-head lists apart; it judges what the forward pass does from what the modules are:
#
# * a *group* is the lists (``ModuleList``/``Sequential``) of one parent that have the same length
#   and hold different classes (XLM's ``attentions``/``layer_norm1``/``ffns``/``layer_norm2``,
#   PVT's ``patch_embeddings``/``block``); element i of the group is the union of the i-th elements;
# * a group is a *stack* if its elements are composite (some has parameters in two or more leaf
#   modules; a weight-normed conv is one leaf),
#   are repeated (mostly sharing their class with another element, or the class of another stack's
#   blocks: a one-layer encoder) and *chainable*: the width element i produces is one that a
#   Linear/Conv of element i+1 takes in, for most consecutive pairs. Lists whose elements are not applied one
#   after another -- Qwen3-VL's deepstack mergers, per-level neck projections, per-stage heads --
#   map one width to another and fail that test: they are side lists, not stacks;
# * an element of a stack is a *stage* if it holds stacks of its own (searched at any depth, a
#   one-element list counts) with at least half of its parameters, and the stages hold more blocks
#   than there are stages; elements of a stage list that hold no stack (SwiftFormer's downsamples)
#   sit between stages.

_WITHIN_BLOCK_CLASS_WORDS = ("Expert", "MLP", "Mlp", "Head")


def _params_direct(module: nn.Module) -> bool:
    """A parametrised leaf: it holds parameters itself, or is parametrised (weight norm).

    A weight-normed conv keeps its ``weight`` in ``parametrizations.weight.original0/1``: the
    ParametrizationList is part of the conv, not a second leaf, so one such conv is not composite.
    """
    if (isinstance(module, nn.utils.parametrize.ParametrizationList)
            or type(module).__name__ == "ParametrizationList"):
        return False
    own = any(p is not None for p in module.parameters(recurse=False))
    return own or nn.utils.parametrize.is_parametrized(module)


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _numel(modules: list[nn.Module]) -> int:
    seen: set[int] = set()
    total = 0
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def _widths(leaf: nn.Module) -> tuple[int | None, int | None]:
    """(input width, output width) of a parametrised leaf, None where its shape does not say."""
    if isinstance(leaf, nn.Linear) and leaf.weight is not None and leaf.weight.dim() == 2:
        return int(leaf.weight.shape[1]), int(leaf.weight.shape[0])  # from the shape: never a tensor
    if isinstance(leaf, nn.modules.conv._ConvNd) and isinstance(leaf.in_channels, int):
        return leaf.in_channels, leaf.out_channels
    if isinstance(leaf, nn.LayerNorm):
        return leaf.normalized_shape[-1], leaf.normalized_shape[-1]
    if isinstance(leaf, nn.modules.batchnorm._NormBase):
        return leaf.num_features, leaf.num_features
    if isinstance(leaf, nn.GroupNorm):
        return leaf.num_channels, leaf.num_channels
    if isinstance(leaf, nn.Embedding):
        return None, leaf.embedding_dim
    weight = leaf._parameters.get("weight")
    if weight is not None and weight.dim() == 1 and len(leaf._parameters) <= 2:  # an RMSNorm-like scale
        return weight.shape[0], weight.shape[0]
    return None, None


def _io(modules: list[nn.Module]) -> tuple[set[int], set[int]]:
    """Widths the element's weight layers take in, and the width its last parametrised leaf produces.

    The input side is a set (every Linear/Conv input width, else every leaf's): registration order
    is not forward order (Qwen3.5's linear-attention layers register a depthwise conv first), but
    a block that continues the previous one has *some* layer reading the previous block's width.
    """
    found = [(name.count("."), leaf)
             for m in modules for name, leaf in m.named_modules() if _params_direct(leaf)]
    leaves = [leaf for _, leaf in found]
    weighted = [leaf for leaf in leaves if isinstance(leaf, (nn.Linear, nn.modules.conv._ConvNd))]
    ins = {w[0] for w in map(_widths, weighted or leaves) if w[0] is not None}
    # The output: the last-registered leaf's width, or the last of the shallowest leaves (a block's
    # own residual norms, when its attention or experts register last). A norm registered before every
    # other layer of the element normalises its *input* (a merger's ``ln_q`` before its MLP): it says
    # nothing about the output width, so it is not one of those leaves.
    last = next((w[1] for w in map(_widths, reversed(leaves)) if w[1] is not None), None)
    start = next((i for i, leaf in enumerate(leaves) if not _is_norm(leaf)), 0)
    outs: list[int] = []
    for level in sorted({d for d, _ in found[start:]}):
        outs = [w[1] for d, leaf in found[start:] if d == level for w in [_widths(leaf)] if w[1] is not None]
        if outs:
            break
    return ins, {w for w in (last, outs[-1] if outs else None) if w is not None}


def _is_norm(leaf: nn.Module) -> bool:
    """A width-preserving normalisation layer (LayerNorm, BatchNorm, GroupNorm, an RMSNorm-like scale)."""
    if isinstance(leaf, (nn.LayerNorm, nn.modules.batchnorm._NormBase, nn.GroupNorm)):
        return True
    weight = leaf._parameters.get("weight")
    return weight is not None and weight.dim() == 1 and len(leaf._parameters) <= 2 and not isinstance(
        leaf, (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding))


def _composite(modules: list[nn.Module]) -> bool:
    return sum(1 for m in modules for leaf in m.modules() if _params_direct(leaf)) >= 2


def _chainable(elements: list[list[nn.Module]]) -> bool:
    """Most consecutive elements connect: element i's output width is element i+1's input width."""
    ios = [_io(e) for e in elements]
    pairs = [(a[1], b[0]) for a, b in zip(ios, ios[1:], strict=False) if a[1] and b[0]]
    return not pairs or sum(bool(outs & ins) for outs, ins in pairs) * 2 >= len(pairs)


def _lists(parent: nn.Module) -> list[list[nn.Module]]:
    """Groups of parallel lists among ``parent``'s children, each as its list of element unions."""
    lists = [c for c in parent.children() if isinstance(c, (nn.ModuleList, nn.Sequential)) and _has_params(c)]
    groups: list[list[nn.Module]] = []
    for lst in lists:
        kids = [k for k in lst.children() if _has_params(k)]
        for group in groups:
            other = [k for k in group[0].children() if _has_params(k)]
            if len(other) == len(kids) and not ({type(k) for k in other} & {type(k) for k in kids}):
                group.append(lst)
                break
        else:
            groups.append([lst])
    out = []
    for group in groups:
        columns = [[k for k in lst.children() if _has_params(k)] for lst in group]
        out.append([[col[i] for col in columns] for i in range(len(columns[0]))])
    return out


def _is_stack(elements: list[list[nn.Module]], block_classes: set[type], min_len: int) -> bool:
    if len(elements) < min_len or not elements:
        return False
    if not any(_composite(e) for e in elements):  # a Sequential of bare layers is one module
        return False
    classes = Counter(type(e[0]) for e in elements)
    repeated = sum(c for c in classes.values() if c >= 2)
    lone = len(elements) == 1 and min_len == 1 and not block_classes  # inside a stage: any list counts
    if not lone and repeated * 2 < len(elements) and not any(cls in block_classes for cls in classes):
        return False
    return _chainable(elements)


@dataclass
class _OStack:
    elements: list[list[nn.Module]]
    # per element: its blocks (lists of modules) if it is a stage, else None (the element is a block)
    stages: list[list[list[nn.Module]] | None] | None = None


def _find_stacks(roots: list[nn.Module], block_classes: set[type], min_len: int) -> list[_OStack]:
    found: list[_OStack] = []

    def visit(module: nn.Module) -> None:
        in_stack: set[int] = set()
        for elements in _lists(module):
            if _is_stack(elements, block_classes, min_len):
                found.append(_OStack(elements))
                in_stack.update(id(k) for e in elements for k in e)
        for child in module.children():
            if isinstance(child, (nn.ModuleList, nn.Sequential)):
                for k in child.children():
                    if id(k) not in in_stack:
                        visit(k)
            else:
                visit(child)

    for root in roots:
        if isinstance(root, (nn.ModuleList, nn.Sequential)):  # a stage that is itself a list of blocks
            elements = [[k] for k in root.children() if _has_params(k)]
            if _is_stack(elements, block_classes, min_len):
                found.append(_OStack(elements))
                continue
        visit(root)
    return found


def _within_block(elements: list[list[nn.Module]]) -> bool:
    return any(word in type(e[0]).__name__ for e in elements for word in _WITHIN_BLOCK_CLASS_WORDS)


def _expand_stages(stack: _OStack, block_classes: set[type]) -> None:
    """Decide whether the elements of ``stack`` are stages, filling ``stack.stages``."""
    inner: list[list[list[nn.Module]] | None] = []
    for element in stack.elements:
        stacks = [s for s in _find_stacks(element, set(), 1) if not _within_block(s.elements)]
        blocks = [e for s in stacks for e in s.elements]
        if blocks and _numel([m for b in blocks for m in b]) * 2 >= _numel(element):
            inner.append(blocks)
        else:
            inner.append(None)
    staged = [b for b in inner if b is not None]
    if staged and sum(len(b) for b in staged) > len(staged):
        stage_classes = {type(e[0]) for e, b in zip(stack.elements, inner, strict=True) if b is not None}
        plain_classes = {type(e[0]) for e, b in zip(stack.elements, inner, strict=True) if b is None}
        if not stage_classes & plain_classes:
            stack.stages = inner


@dataclass
class OracleResult:
    """Blocks (parameter names, forward order) and, for the rest, the depths the contract allows."""

    blocks: list[list[str]]
    # name -> (lowest, highest) allowed depth for non-block parameters inside a stack's element;
    # parameters outside every stack are judged by position (before / between / after the blocks).
    bounds: dict[str, tuple[int, int]]
    # per block: the index of the stack (tower) it belongs to, in chaining order
    block_stack: list[int] = field(default_factory=list)
    # non-block parameter -> the stack whose home holds it: the largest module around that stack that holds
    # no other stack's blocks (LLaVA's ``language_model`` for its ``embed_tokens``, T5's ``encoder`` for its
    # ``final_layer_norm``); a parameter outside every home (a projector between two towers) is not listed
    home: dict[str, int] = field(default_factory=dict)
    # a task model's head: parameters outside its ``base_model_prefix`` body and its input embeddings, which
    # run after every block wherever they are registered (XLM-RoBERTa registers its classifier first)
    heads: frozenset[str] = frozenset()


def oracle(model: nn.Module) -> OracleResult:
    owner: dict[int, str] = {}
    for name, param in model.named_parameters():
        owner.setdefault(id(param), name)

    def names_of(modules: list[nn.Module]) -> list[str]:
        out: list[str] = []
        for m in modules:
            out.extend(owner[id(p)] for p in m.parameters() if id(p) in owner)
        return list(dict.fromkeys(out))

    # Classes of the blocks of stacks with two or more elements: a one-element list of such a
    # class (Canine's one-layer character encoders) is a stack too.
    first = _find_stacks([model], set(), 2)
    block_classes = {type(e[0]) for s in first for e in s.elements}
    stacks = _find_stacks([model], block_classes, 1)
    for s in stacks:
        _expand_stages(s, block_classes)
    order = {name: i for i, name in enumerate(owner.values())}
    stacks.sort(key=lambda s: min((order[n] for e in s.elements for n in names_of(e)), default=0))

    blocks: list[list[str]] = []
    block_stack: list[int] = []
    pending: list[tuple[list[str], int, bool]] = []  # (names, index of the next block, is stage-own)
    stage_own: list[tuple[list[str], int, int]] = []  # (names, first block index, last block index)
    for index, s in enumerate(stacks):
        for i, element in enumerate(s.elements):
            inner = s.stages[i] if s.stages is not None else None
            if s.stages is None:
                blocks.append(names_of(element))
                block_stack.append(index)
            elif inner is None:  # a downsample between stages
                pending.append((names_of(element), len(blocks), False))
            else:
                lo = len(blocks)
                for b in inner:
                    blocks.append(names_of(b))
                    block_stack.append(index)
                stage_own.append((names_of(element), lo, len(blocks) - 1))
    # A module shared by several blocks (Zamba's shared transformer) belongs to the first one.
    claimed: set[str] = set()
    unique: list[list[str]] = []
    for block in blocks:
        mine = [n for n in block if n not in claimed]
        claimed.update(mine)
        unique.append(mine)
    home = _homes(model, stacks, unique, block_stack, owner, names_of)
    n = len(unique)
    bounds: dict[str, tuple[int, int]] = {}
    for names, lo, hi in stage_own:
        for name in names:
            if name not in claimed:
                # blocks lo..hi have depths lo+1..hi+1
                bounds.setdefault(name, (max(lo, 0), min(hi + 2, n + 1)))
    for names, nxt, _ in pending:
        for name in names:
            if name not in claimed:
                bounds.setdefault(name, (nxt if nxt > 0 else 0, nxt + 1 if nxt < n else n + 1))
    kept = [i for i, b in enumerate(unique) if b]
    return OracleResult([unique[i] for i in kept], bounds, [block_stack[i] for i in kept],
                        {name: stack for name, stack in home.items() if name not in claimed},
                        frozenset(_head_names(model, owner)) - claimed)


def _head_names(model: nn.Module, owner: dict[int, str]) -> list[str]:
    """Parameters of the outermost task model outside its body and input embeddings (OracleResult.heads)."""
    for module in model.modules():
        prefix = getattr(module, "base_model_prefix", "")
        body = getattr(module, prefix, None) if isinstance(prefix, str) and prefix else None
        if isinstance(body, nn.Module) and body is not module:
            try:
                embeddings = module.get_input_embeddings()
            except (AttributeError, NotImplementedError):
                embeddings = None
            skip = {id(p) for p in body.parameters()}
            if isinstance(embeddings, nn.Module):
                skip |= {id(p) for p in embeddings.parameters()}
            return [owner[id(p)] for p in module.parameters() if id(p) not in skip and id(p) in owner]
    return []


def _homes(model: nn.Module, stacks: list[_OStack], blocks: list[list[str]], block_stack: list[int],
           owner: dict[int, str], names_of) -> dict[str, int]:  # noqa: ANN001
    """Parameter name -> the stack whose home module holds it (``OracleResult.home``), from containment."""
    by_name = {name: pid for pid, name in owner.items()}
    stack_of_param = {by_name[n]: block_stack[k] for k, block in enumerate(blocks) for n in block}
    parent: dict[int, nn.Module] = {}
    for module in model.modules():
        for child in module.children():
            parent.setdefault(id(child), module)
    touched: dict[int, frozenset[int]] = {}

    def touches(module: nn.Module) -> frozenset[int]:
        """The stacks with a block parameter somewhere inside ``module``."""
        key = id(module)
        if key not in touched:
            found = {stack_of_param[id(p)] for p in module._parameters.values()
                     if p is not None and id(p) in stack_of_param}
            for child in module.children():
                found |= touches(child)
            touched[key] = frozenset(found)
        return touched[key]

    home: dict[str, int] = {}
    for index, s in enumerate(stacks):
        module = s.elements[0][0]
        if touches(module) - {index}:
            continue
        while id(module) in parent and touches(parent[id(module)]) <= {index}:
            module = parent[id(module)]
        for name in names_of([module]):
            home.setdefault(name, index)
    return home


def oracle_blocks(model: nn.Module) -> list[list[str]]:
    """Blocks (lists of parameter names) in forward order according to module structure."""
    return oracle(model).blocks


# ----------------------------------------------------------------------------------------------
# Contract check.


def _output_part(name: str) -> bool:
    """The contract's output parts: a module named ``final*`` or ``*_out`` (OPT's ``final_layer_norm``)."""
    return any(s.startswith("final") or s.endswith("_out") for s in name.split(".")[:-1])


def _embedding_norm(name: str) -> bool:
    """The contract's embedding norms registered after their blocks: BART-family ``layernorm_embedding`` and
    ProphetNet's ``embeddings_layer_norm`` (each applied to its stack's embeddings, before its blocks)."""
    return any(s in ("layernorm_embedding", "embeddings_layer_norm") for s in name.split(".")[:-1])


def check_contract(names: list[str], depths: dict[str, int], result: OracleResult,
                   names_only: bool = False) -> str:
    """Empty string if ``depths`` satisfies C1-C7 of issue 13 against the oracle, else the reason.

    A head registered before the first block must be at N+1 from a module; from names alone (which cannot
    tell a classifier from T5's shared embedding) it is placed by position, at 0. A part named as the output
    and registered before the first block (OPT's decoder ``final_layer_norm``) is at N+1 on both paths.
    """
    blocks = result.blocks
    if not blocks:
        return "oracle found no block list"
    n = len(blocks)
    missing = [name for name in names if not isinstance(depths.get(name), int)]
    if missing:
        return f"C1: {missing[0]} has no int depth"
    pos = {name: i for i, name in enumerate(names)}
    for k, block in enumerate(blocks, start=1):
        got = {depths[name] for name in block}
        if len(got) != 1:
            return f"C2: oracle block {k} ({block[0]}) spans depths {sorted(got)}"
        if got != {k}:
            return f"C3/C4: oracle block {k} ({block[0]}) has depth {got.pop()}, expected {k} (N={n})"
    block_of = {name: k for k, block in enumerate(blocks, start=1) for name in block}
    if result.block_stack:
        stack_of = dict(enumerate(result.block_stack, start=1))
    else:
        stack_of = dict.fromkeys(block_of.values(), 0)
    first = min(pos[b] for b in block_of)
    last = max(pos[b] for b in block_of)
    # For every position, the oracle block of the nearest block parameter before / after it.
    before: list[int | None] = [None] * len(names)
    after: list[int | None] = [None] * len(names)
    current: int | None = None
    for i, name in enumerate(names):
        current = block_of.get(name, current)
        before[i] = current
    current = None
    for i in range(len(names) - 1, -1, -1):
        current = block_of.get(names[i], current)
        after[i] = current
    for name in names:
        if name in block_of:
            continue
        d, p = depths[name], pos[name]
        if not 0 <= d <= n + 1:
            return f"C7: {name} has depth {d}, outside [0, {n + 1}]"
        if name in result.bounds:
            lo, hi = result.bounds[name]
            if not lo <= d <= hi:
                return f"C7: {name} (a stage's own part) has depth {d}, expected {lo}..{hi}"
            continue
        if p < first and ((name in result.heads and not names_only) or _output_part(name)):
            if d != n + 1:
                return (f"C6: {name} is a head or output part registered before the first block but has "
                        f"depth {d}, expected {n + 1}")
            continue
        mine = result.home.get(name)
        if p > first and _embedding_norm(name) and mine is not None:
            start = min(k for k, stack in stack_of.items() if stack == mine)
            expected = 0 if start == 1 else start
            if d != expected:
                return (f"C7: {name} (an embedding norm after its blocks) has depth {d}, expected "
                        f"{expected}, its stack's embeddings'")
            continue
        if p < first and d != 0:
            return f"C5: {name} is before the first block but has depth {d}"
        if p > last and d != n + 1:
            return f"C6: {name} is after the last block but has depth {d}, expected {n + 1}"
        if first < p < last:
            # Between blocks: where it sits in forward order, with the block just before it or the one just
            # after it; inside the home of only one of the two stacks (T5's encoder final norm, LLaVA's text
            # embeddings), with that stack's block. A projector between two towers may take either.
            prev, nxt = before[p], after[p]
            assert prev is not None and nxt is not None
            allowed = {prev, nxt}
            sides = (stack_of[prev], stack_of[nxt])
            if mine is not None and sides[0] != sides[1] and mine in sides:
                allowed = {prev if mine == sides[0] else nxt}
            if d not in allowed:
                return (f"C7: {name} sits between oracle blocks {prev} and {nxt} but has depth {d}, "
                        f"expected {sorted(allowed)}")
    return ""


# ----------------------------------------------------------------------------------------------
# Building models.


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Abort a model build that takes too long (SIGALRM; main thread on POSIX only)."""

    def handler(signum, frame):  # noqa: ARG001
        raise _Timeout(f"build took more than {seconds}s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def build(model_type: str, cls_name: str, timeout: int) -> Built:
    import transformers
    from transformers import CONFIG_MAPPING

    config = CONFIG_MAPPING[model_type]()
    cls = getattr(transformers, cls_name)
    with time_limit(timeout), warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = model_from_config(cls, config)
    named = list(model.named_parameters())
    try:
        module_depths: dict[str, int] | str = layer_depths(model)
    except ValueError as exc:
        module_depths = f"ValueError: {str(exc)[:160]}"
    return Built([n for n, _ in named], [int(p.numel()) for _, p in named], oracle(model), module_depths)


def evaluate(task: str, model_type: str, cls_name: str, built: Built) -> Outcome:
    out = Outcome(task, model_type, cls_name, "pass", n_blocks=len(built.oracle.blocks),
                  n_params=len(built.names))
    if not built.oracle.blocks:
        out.status, out.reason = "skip", "oracle found no block list (no repeated blocks to check)"
        return out

    reasons = []
    results: dict[str, dict[str, int] | None] = {}
    for path in ("module", "names"):
        depths: dict[str, int] | str
        if path == "module":
            depths = built.module_depths
        else:
            try:
                depths = layer_depths(built.names)
            except ValueError as exc:
                depths = f"ValueError: {str(exc)[:160]}"
        reason = depths if isinstance(depths, str) else check_contract(built.names, depths, built.oracle,
                                                                       names_only=path == "names")
        results[path] = None if isinstance(depths, str) else depths
        setattr(out, f"{path}_ok", not reason)
        if reason:
            reasons.append(f"[{path}] {reason}")
    # the paths agree everywhere but on a head registered before the body, which only a module can place
    pos = {name: i for i, name in enumerate(built.names)}
    first = min((pos[n] for b in built.oracle.blocks for n in b), default=0)
    moved = {n for n in built.oracle.heads if pos[n] < first}
    out.heads_first = len(moved)
    out.agree = (results["module"] is not None and results["names"] is not None
                 and {k: v for k, v in results["module"].items() if k not in moved}
                 == {k: v for k, v in results["names"].items() if k not in moved})
    if reasons:
        out.status, out.reason = "fail", " ".join(reasons)
    return out


def iter_targets(tasks: list[str], models: set[str] | None) -> Iterator[tuple[str, str, str]]:
    from transformers.models.auto import modeling_auto

    for task in tasks:
        mapping = EXTRA_HEADS if TASKS[task] == "EXTRA_HEADS" else getattr(modeling_auto, TASKS[task])
        for model_type, cls_name in mapping.items():
            if models and model_type not in models:
                continue
            if isinstance(cls_name, (list, tuple)):
                cls_name = cls_name[0]
            yield task, model_type, cls_name


def time_100_blocks() -> tuple[float, float]:
    """Milliseconds for layer_depths on a 100-block Llama (meta device): names only, module (best of 5)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=100,
                         num_attention_heads=4, num_key_value_heads=2)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    names = [n for n, _ in model.named_parameters()]
    timings = []
    for source in (names, model):
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            layer_depths(source)
            best = min(best, time.perf_counter() - t0)
        timings.append(best * 1000)
    return timings[0], timings[1]


def write_report(outcomes: list[Outcome], out: Path, timing_ms: tuple[float, float], elapsed: float) -> float:
    built = [o for o in outcomes if o.status in ("pass", "fail")]
    passed = [o for o in built if o.status == "pass"]
    failed = [o for o in built if o.status == "fail"]
    skipped = [o for o in outcomes if o.status == "skip"]
    pct = 100.0 * len(passed) / len(built) if built else 0.0
    n_module = sum(o.module_ok for o in built)
    n_names = sum(o.names_ok for o in built)
    archs = {o.model_type for o in built}
    module_archs = archs - {o.model_type for o in built if not o.module_ok}
    names_archs = archs - {o.model_type for o in built if not o.names_ok}

    def share(k: int, n: int) -> str:
        return f"{k} / {n} = {100.0 * k / n:.1f}%" if n else "0 / 0"

    lines = [
        "# Layer-depth census",
        "",
        "Generated by `benchmarks/layer_census.py`: every architecture in the listed transformers task",
        "mappings is built on the meta device from its default config, and `layer_depths` -- from the",
        "module (`layer_depths(model)`) and from the names alone (`layer_depths(names)`) -- is checked",
        "against an independent oracle read from module structure and tensor shapes (contract C1-C7 of",
        "issue 13: parallel lists are one stack, side lists are not stacks, stages hold blocks; a head or",
        "a part named `final*` / `*_out` registered before the first block runs after the last: N+1; an",
        "embedding norm registered after its blocks, BART's `layernorm_embedding`, sits with its stack's",
        "embeddings: the stack's first block, 0 for the first stack).",
        "",
        f"- transformers {__import__('transformers').__version__}, torch {torch.__version__}",
        f"- (task, architecture) pairs tried: {len(outcomes)}",
        f"- checked (built, oracle found blocks): {len(built)}",
        f"- **module path: {share(n_module, len(built))}** of (task, architecture) pairs; "
        f"architectures passing on every task: {share(len(module_archs), len(archs))}",
        f"- **name path: {share(n_names, len(built))}**; "
        f"architectures: {share(len(names_archs), len(archs))}",
        f"- both paths: {share(len(passed), len(built))}; the two give identical depths on "
        f"{share(sum(o.agree for o in built), len(built))}",
        f"- heads registered before the body (N+1 from the module, 0 from the names alone; not counted as a "
        f"disagreement): {sum(o.heads_first > 0 for o in built)} pairs, e.g. "
        f"{', '.join(sorted({o.model_type for o in built if o.heads_first})[:6])}",
        f"- skipped (build failed or no block list): {len(skipped)}",
        f"- `layer_depths` on a 100-block Llama (meta device): {timing_ms[0]:.1f} ms from names, "
        f"{timing_ms[1]:.1f} ms from the module",
        f"- census wall time: {elapsed:.0f} s",
        "",
        "## Failures",
        "",
    ]
    if failed:
        lines += ["| task | model_type | class | reason |", "|---|---|---|---|"]
        lines += [f"| {o.task} | {o.model_type} | {o.cls_name} | {o.reason.replace('|', '/')} |"
                  for o in failed]
    else:
        lines.append("None.")
    lines += ["", "## Skipped", ""]
    if skipped:
        lines += ["| task | model_type | class | reason |", "|---|---|---|---|"]
        lines += [f"| {o.task} | {o.model_type} | {o.cls_name} | {o.reason.replace('|', '/')[:200]} |"
                  for o in skipped]
    else:
        lines.append("None.")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return pct


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help=f"comma-separated subset of {','.join(TASKS)}")
    parser.add_argument("--limit", type=int, default=None, help="stop after this many (task, model) pairs")
    parser.add_argument("--models", default=None, help="comma-separated model_types to include")
    parser.add_argument("--timeout", type=int, default=60, help="seconds allowed to build one model")
    parser.add_argument("--cache", type=Path, default=None,
                        help="pickle of built models' names and oracle blocks, reused between runs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown tasks {unknown}; choose from {list(TASKS)}")
    models = {m.strip() for m in args.models.split(",")} if args.models else None
    cache: dict = {}
    if args.cache and args.cache.exists():
        cache = pickle.loads(args.cache.read_bytes())

    start = time.perf_counter()
    outcomes: list[Outcome] = []
    targets = list(iter_targets(tasks, models))[: args.limit]
    for i, (task, model_type, cls_name) in enumerate(targets, start=1):
        key = (model_type, cls_name)
        t0 = time.perf_counter()
        if key not in cache:
            try:
                cache[key] = build(model_type, cls_name, args.timeout)
            except BaseException as exc:  # noqa: BLE001 - record every build failure and go on
                if isinstance(exc, KeyboardInterrupt):
                    raise
                cache[key] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
        entry = cache[key]
        if isinstance(entry, str):
            outcome = Outcome(task, model_type, cls_name, "skip", reason=f"build failed: {entry}")
        else:
            outcome = evaluate(task, model_type, cls_name, entry)
        outcomes.append(outcome)
        print(f"[{i}/{len(targets)}] {task:24s} {model_type:28s} {outcome.status:4s} "
              f"N={outcome.n_blocks:<4d} {time.perf_counter() - t0:5.1f}s {outcome.reason}", flush=True)
    if args.cache:
        args.cache.write_bytes(pickle.dumps(cache))

    timing_ms = time_100_blocks()
    pct = write_report(outcomes, args.out, timing_ms, time.perf_counter() - start)
    built = [o for o in outcomes if o.status != "skip"]
    print(f"\nmodule path {sum(o.module_ok for o in built)}/{len(built)}, name path "
          f"{sum(o.names_ok for o in built)}/{len(built)}, both {pct:.1f}%; layer_depths on 100 blocks: "
          f"{timing_ms[0]:.1f} ms names, {timing_ms[1]:.1f} ms module")
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
