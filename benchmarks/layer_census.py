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
    oracle_blocks: list[list[str]]


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
# Oracle: block lists from module structure (shares no code with hf_lpwd.layers).


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _is_block_list(module: nn.Module) -> bool:
    """A ModuleList/Sequential of >= 2 composite, mostly same-class modules with parameters."""
    if not isinstance(module, (nn.ModuleList, nn.Sequential)):
        return False
    kids = [m for m in module.children() if _has_params(m)]
    if len(kids) < 2:
        return False
    if not all(any(_has_params(c) for c in k.children()) for k in kids):
        return False
    classes = Counter(type(k).__name__ for k in kids)
    repeated = sum(c for c in classes.values() if c >= 2)
    return repeated * 2 >= len(kids)


def _is_stage(element: nn.Module) -> nn.Module | None:
    """The inner block list if ``element`` is a stage of a hierarchical model, else None.

    A stage holds, directly, a list of one or more composite same-class modules with at least half
    of its parameters; a list of MoE experts or MLPs inside a decoder layer is not a stage's blocks.
    """
    def mlp_like(module: nn.Module) -> bool:
        return any(word in type(module).__name__ for word in ("Expert", "MLP", "Mlp"))

    def inner_list(module: nn.Module) -> bool:
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            return False
        kids = [k for k in module.children() if _has_params(k)]
        return (
            bool(kids)
            and all(any(_has_params(c) for c in k.children()) for k in kids)
            and not any(mlp_like(k) for k in kids)
            and (len(kids) == 1 or _is_block_list(module))
        )

    if mlp_like(element):
        return None
    inner = [element] if inner_list(element) else []
    inner += [c for c in element.children() if inner_list(c)]
    if not inner:
        return None
    best = max(inner, key=_numel)
    return best if _numel(best) * 2 >= _numel(element) else None


def _oracle_lists(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Outermost block lists, in named_modules order."""
    found: list[tuple[str, nn.Module]] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if _is_block_list(child):
                found.append((path, child))
            else:
                visit(path + ".", child)

    visit("", model)
    return found


def oracle_blocks(model: nn.Module) -> list[list[str]]:
    """Blocks (lists of parameter names) in forward order according to module structure."""
    owner: dict[int, str] = {}
    for name, param in model.named_parameters():
        owner.setdefault(id(param), name)

    def names_of(module: nn.Module) -> list[str]:
        return [owner[id(p)] for p in module.parameters() if owner.get(id(p)) is not None]

    def expand(block_list: nn.Module) -> list[list[str]]:
        kids = [k for k in block_list.children() if _has_params(k)]
        stages = [_is_stage(k) for k in kids]
        if all(s is not None for s in stages):
            inner = [[names_of(b) for b in s.children() if _has_params(b)] for s in stages]  # type: ignore[union-attr]
            if sum(len(b) for b in inner) > len(kids):
                return [blk for stage in inner for blk in stage]
        return [names_of(k) for k in kids]

    blocks: list[list[str]] = []
    for _, module in _oracle_lists(model):
        blocks.extend(expand(module))
    # A module shared by several blocks (Zamba's shared transformer) belongs to the first one,
    # as named_parameters() lists it only there.
    claimed: set[str] = set()
    unique: list[list[str]] = []
    for block in blocks:
        mine = [n for n in block if n not in claimed]
        claimed.update(mine)
        if mine:
            unique.append(mine)
    return unique


# ----------------------------------------------------------------------------------------------
# Contract check.


def check_contract(names: list[str], depths: dict[str, int], blocks: list[list[str]]) -> str:
    """Empty string if ``depths`` satisfies the contract against the oracle, else the reason."""
    if not blocks:
        return "oracle found no block list"
    n = len(blocks)
    pos = {name: i for i, name in enumerate(names)}
    for k, block in enumerate(blocks, start=1):
        got = {depths[name] for name in block}
        if len(got) != 1:
            return f"oracle block {k} ({block[0]}) spans depths {sorted(got)}"
        if got != {k}:
            return f"oracle block {k} ({block[0]}) has depth {got.pop()}, expected {k} (N={n})"
    in_block = {name for block in blocks for name in block}
    first = min(pos[b] for block in blocks for b in block)
    last = max(pos[b] for block in blocks for b in block)
    for name in names:
        if name in in_block:
            continue
        d, p = depths[name], pos[name]
        if p < first and d != 0:
            return f"{name} is before the first block but has depth {d}"
        if p > last and d != n + 1:
            return f"{name} is after the last block but has depth {d}, expected {n + 1}"
        if first < p < last and not 1 <= d <= n:
            return f"{name} sits between blocks but has depth {d}"
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
    return Built([n for n, _ in named], [int(p.numel()) for _, p in named], oracle_blocks(model))


def evaluate(task: str, model_type: str, cls_name: str, built: Built) -> Outcome:
    out = Outcome(task, model_type, cls_name, "pass", n_blocks=len(built.oracle_blocks), n_params=len(built.names))
    if not built.oracle_blocks:
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
        reason = check_contract(built.names, depths, built.oracle_blocks)
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
