"""Coverage census for ``hf_lpwd.layers.layer_depths`` over the transformers model zoo.

Why: the depth parser is one general algorithm over parameter names, so the only honest
measure of it is to run it on every architecture transformers ships and compare it with an
independent oracle that reads the *module structure* instead of names. Every model is built
on the meta device from its default config, so no weights are allocated or downloaded.

The oracle reads module *types*, never names: a block list is an ``nn.ModuleList``/``nn.Sequential``
of two or more composite modules (they have sub-modules with parameters) that mostly share their
class with another element; only the outermost such lists count. When every element of a list is
a stage -- it holds, itself or as a direct child, a list of composite modules whose classes are not
experts/MLPs and which has at least half of the element's parameters -- and the stages hold more
blocks than there are stages, the inner lists' elements are the blocks (one level). Lists are
chained in the order of ``named_modules()`` and a parameter shared by several blocks belongs to the
first (as ``named_parameters()`` lists it there).

The contract checked for both the name-only path and the module path of ``layer_depths``:
the oracle's N blocks get depths 1..N in order (one depth per block), parameters before the first
block get 0, parameters after the last block get N+1, and nothing in between leaves 1..N.

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
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_lpwd.layers import layer_depths  # noqa: E402

TASKS = {
    "causal_lm": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "sequence_classification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "masked_lm": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "seq2seq_lm": "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "image_classification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    "image_text_to_text": "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
}
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "layer_census.md"


@dataclass
class Built:
    """What the census keeps of one built model (small enough to cache between runs)."""

    names: list[str]
    numels: list[int]
    oracle: OracleResult


@dataclass
class Outcome:
    task: str
    model_type: str
    cls_name: str
    status: str  # "pass", "fail", "skip"
    reason: str = ""
    n_blocks: int = 0
    n_params: int = 0
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
# * a group is a *stack* if its elements are composite (parameters in two or more leaf modules),
#   repeated (mostly sharing their class with another element, or the class of another stack's
#   blocks: a one-layer encoder) and *chainable*: the features element i produces have the width
#   element i+1 takes in, for most consecutive pairs. Lists whose elements are not applied one
#   after another -- Qwen3-VL's deepstack mergers, per-level neck projections, per-stage heads --
#   map one width to another and fail that test: they are side lists, not stacks;
# * an element of a stack is a *stage* if it holds stacks of its own (searched at any depth, a
#   one-element list counts) with at least half of its parameters, and the stages hold more blocks
#   than there are stages; elements of a stage list that hold no stack (SwiftFormer's downsamples)
#   sit between stages.

_WITHIN_BLOCK_CLASS_WORDS = ("Expert", "MLP", "Mlp", "Head")


def _params_direct(module: nn.Module) -> bool:
    return any(p is not None for p in module._parameters.values())


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
    if isinstance(leaf, nn.Linear):
        return leaf.in_features, leaf.out_features
    if isinstance(leaf, nn.modules.conv._ConvNd):
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


def _io(modules: list[nn.Module]) -> tuple[int | None, int | None]:
    """Width taken by the first parametrised leaf and produced by the last one (registration order)."""
    leaves = [leaf for m in modules for leaf in m.modules() if _params_direct(leaf)]
    first = next((w[0] for w in map(_widths, leaves) if w[0] is not None), None)
    last = next((w[1] for w in map(_widths, reversed(leaves)) if w[1] is not None), None)
    return first, last


def _composite(modules: list[nn.Module]) -> bool:
    return sum(1 for m in modules for leaf in m.modules() if _params_direct(leaf)) >= 2


def _chainable(elements: list[list[nn.Module]]) -> bool:
    """Most consecutive elements connect: element i's output width is element i+1's input width."""
    ios = [_io(e) for e in elements]
    pairs = [(a[1], b[0]) for a, b in zip(ios, ios[1:], strict=False) if a[1] is not None and b[0] is not None]
    return not pairs or sum(out == inp for out, inp in pairs) * 2 >= len(pairs)


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
    if not all(_composite(e) for e in elements):
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
    pending: list[tuple[list[str], int, bool]] = []  # (names, index of the next block, is stage-own)
    stage_own: list[tuple[list[str], int, int]] = []  # (names, first block index, last block index)
    for s in stacks:
        for i, element in enumerate(s.elements):
            inner = s.stages[i] if s.stages is not None else None
            if s.stages is None:
                blocks.append(names_of(element))
            elif inner is None:  # a downsample between stages
                pending.append((names_of(element), len(blocks), False))
            else:
                lo = len(blocks)
                for b in inner:
                    blocks.append(names_of(b))
                stage_own.append((names_of(element), lo, len(blocks) - 1))
    # A module shared by several blocks (Zamba's shared transformer) belongs to the first one.
    claimed: set[str] = set()
    unique: list[list[str]] = []
    for block in blocks:
        mine = [n for n in block if n not in claimed]
        claimed.update(mine)
        unique.append(mine)
    n = len(unique)
    bounds: dict[str, tuple[int, int]] = {}
    for names, lo, hi in stage_own:
        for name in names:
            if name not in claimed:
                bounds.setdefault(name, (max(lo, 0), min(hi + 2, n + 1)))  # blocks lo..hi have depths lo+1..hi+1
    for names, nxt, _ in pending:
        for name in names:
            if name not in claimed:
                bounds.setdefault(name, (nxt if nxt > 0 else 0, nxt + 1 if nxt < n else n + 1))
    return OracleResult([b for b in unique if b], bounds)


def oracle_blocks(model: nn.Module) -> list[list[str]]:
    """Blocks (lists of parameter names) in forward order according to module structure."""
    return oracle(model).blocks


# ----------------------------------------------------------------------------------------------
# Contract check.


def check_contract(names: list[str], depths: dict[str, int], result: OracleResult) -> str:
    """Empty string if ``depths`` satisfies C1-C7 of issue 13 against the oracle, else the reason."""
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
    in_block = {name for block in blocks for name in block}
    first = min(pos[b] for block in blocks for b in block)
    last = max(pos[b] for block in blocks for b in block)
    for name in names:
        if name in in_block:
            continue
        d, p = depths[name], pos[name]
        if not 0 <= d <= n + 1:
            return f"C7: {name} has depth {d}, outside [0, {n + 1}]"
        if name in result.bounds:
            lo, hi = result.bounds[name]
            if not lo <= d <= hi:
                return f"C7: {name} (a stage's own part) has depth {d}, expected {lo}..{hi}"
            continue
        if p < first and d != 0:
            return f"C5: {name} is before the first block but has depth {d}"
        if p > last and d != n + 1:
            return f"C6: {name} is after the last block but has depth {d}, expected {n + 1}"
        if first < p < last and not 1 <= d <= n:
            return f"C7: {name} sits between blocks but has depth {d}"
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
        model = cls._from_config(config) if hasattr(cls, "_from_config") else cls(config)
    named = list(model.named_parameters())
    return Built([n for n, _ in named], [int(p.numel()) for _, p in named], oracle(model))


def evaluate(task: str, model_type: str, cls_name: str, built: Built) -> Outcome:
    out = Outcome(task, model_type, cls_name, "pass", n_blocks=len(built.oracle.blocks), n_params=len(built.names))
    if not built.oracle.blocks:
        out.status, out.reason = "skip", "oracle found no block list (no repeated blocks to check)"
        return out

    class _Sized(nn.Module):  # stands in for the model: named_parameters with the real numels
        def named_parameters(self, *args, **kwargs):  # noqa: ARG002
            for name, numel in zip(built.names, built.numels, strict=True):
                yield name, torch.empty(numel, device="meta")

    for path, source in (("names", built.names), ("module", _Sized())):
        try:
            depths = layer_depths(source)
        except ValueError as exc:
            out.status, out.reason = "fail", f"[{path}] ValueError: {str(exc)[:160]}"
            return out
        reason = check_contract(built.names, depths, built.oracle)
        if reason:
            out.status, out.reason = "fail", f"[{path}] {reason}"
            return out
    return out


def iter_targets(tasks: list[str], models: set[str] | None) -> Iterator[tuple[str, str, str]]:
    from transformers.models.auto import modeling_auto

    for task in tasks:
        mapping = getattr(modeling_auto, TASKS[task])
        for model_type, cls_name in mapping.items():
            if models and model_type not in models:
                continue
            if isinstance(cls_name, (list, tuple)):
                cls_name = cls_name[0]
            yield task, model_type, cls_name


def time_100_blocks() -> float:
    """Milliseconds for layer_depths on the names of a 100-block decoder (best of 5)."""
    names = ["model.embed_tokens.weight"]
    for i in range(100):
        for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            names.append(f"model.layers.{i}.{part}.weight")
        names += [f"model.layers.{i}.input_layernorm.weight", f"model.layers.{i}.post_attention_layernorm.weight"]
    names += ["model.norm.weight", "lm_head.weight"]
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        layer_depths(names)
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def write_report(outcomes: list[Outcome], out: Path, timing_ms: float, elapsed: float) -> float:
    built = [o for o in outcomes if o.status in ("pass", "fail")]
    passed = [o for o in built if o.status == "pass"]
    failed = [o for o in built if o.status == "fail"]
    skipped = [o for o in outcomes if o.status == "skip"]
    pct = 100.0 * len(passed) / len(built) if built else 0.0
    lines = [
        "# Layer-depth census",
        "",
        "Generated by `benchmarks/layer_census.py`: every architecture in the listed transformers task",
        "mappings is built on the meta device from its default config, and `layer_depths` (name-only and",
        "module paths) is checked against an independent oracle read from the module structure.",
        "",
        f"- transformers {__import__('transformers').__version__}, torch {torch.__version__}",
        f"- (task, architecture) pairs tried: {len(outcomes)}",
        f"- checked (built, oracle found blocks): {len(built)}",
        f"- **passed: {len(passed)} / {len(built)} = {pct:.1f}%**",
        f"- skipped (build failed or no block list): {len(skipped)}",
        f"- distinct architectures checked: {len({o.model_type for o in built})}, "
        f"passed on every task: {len({o.model_type for o in built} - {o.model_type for o in failed})}",
        f"- `layer_depths` on the names of a 100-block decoder: {timing_ms:.2f} ms",
        f"- census wall time: {elapsed:.0f} s",
        "",
        "## Failures",
        "",
    ]
    if failed:
        lines += ["| task | model_type | class | reason |", "|---|---|---|---|"]
        lines += [f"| {o.task} | {o.model_type} | {o.cls_name} | {o.reason.replace('|', '/')} |" for o in failed]
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
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
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
    n_built = sum(o.status != "skip" for o in outcomes)
    n_pass = sum(o.status == "pass" for o in outcomes)
    print(f"\npassed {n_pass}/{n_built} = {pct:.1f}%; layer_depths on 100 blocks: {timing_ms:.2f} ms")
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
