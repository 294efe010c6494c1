"""Study Q6's summary beside ``hf-lpwd compare``'s reports: each arm at its design shrink S, its paired
difference to no decay, the train/dev gap, and the distance to the pretrained weights per depth.

``compare`` already writes, per setting, the table of cells with the paired difference to the reference (no
decay) and the plots against λ and against the recorded S. What it does not have, and this script adds:

* the arms by name (no decay, WD → 0, WD → θ₀, LPWD → θ₀, SPD) at their **design** S = λ·Σ_t η_t (from the
  run's own command line: lr, steps, 10 % warm-up, linear decay), the same S for every target, where the
  recorded S of a run may be missing (no decay, SPD), and a plot of the metric against it per arm;
* the loss gap of every arm: the last logged training loss (a mean over the last ``--logging_steps`` steps,
  with dropout) against the dev loss, and the small setting's accuracy gap (``small_gap``: the same no-decay
  runs evaluated on their own training sentences and on dev, paired by seed);
* ‖θ − θ₀‖ per depth at the end of each run, from the Trainer's log key ``lpwd/distance_to_init/depth_DD``
  when the runs log it (the README says what to add where they do not);
* the two folders of a setting that ``run.sh``'s ``ARMS=target`` and ``ARMS=spd`` fill (``anchor_target/``,
  ``anchor_spd/``) merged into one table: every arm's paired difference is to the no-decay runs of its own
  folder, and the two no-decay sets (the same seeds, the same flags but ``--lpwd_spd false``) are checked
  to be equal seed by seed (they should be: CPU training is deterministic).

    .venv/bin/python -m benchmarks.study_q6.summary --out-root benchmarks/results/study_q6

Writes ``OUT_ROOT/summary.md``, ``summary.json`` and ``<setting>_accuracy_vs_S.png`` /
``<setting>_distance_to_init.png`` (with matplotlib).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import lr_sum
from hf_lpwd.compare.stats import fmt_diff, mean_std, paired_differences, t_interval
from hf_lpwd.compare.store import read_results

DISTANCE_PREFIX = "lpwd/distance_to_init/depth_"
"""The per-depth ‖θ_d − θ₀_d‖₂ log key this study needs (not logged by the Trainer yet: see the README)."""
SETTINGS = ("anchor", "small")
METRIC = "eval_accuracy"
WARMUP_FRACTION = 0.1  # the study's --warmup_steps 0.1: ceil(0.1 · steps) steps


def _flag(command: Sequence[str], name: str) -> str | None:
    """The last value of ``--name`` on a command line (the grid's flags come after the base command's)."""
    value = None
    for i, word in enumerate(command[:-1]):
        if word == f"--{name}":
            value = command[i + 1]
    return value


def arm_name(settings: dict[str, str], spd: tuple[str, str] | None = None) -> str:
    """The arm of a cell, in words: what decays, toward what, with which rule (``spd``: SPD's flag and the
    value that turns it on)."""
    if float(settings.get("weight_decay", "0")) == 0:
        return "no decay"
    target = "θ₀" if settings.get("lpwd_decay_target", "zero") == "init" else "0"
    if spd is not None and settings.get(spd[0]) == spd[1]:
        return f"SPD → {target}"
    rule = "LPWD" if settings.get("weight_decay_mode") == "lpwd" else "WD"
    if settings.get("lpwd_layerwise") == "true" and rule == "WD":
        rule = "WD, layer-wise λ"
    return f"{rule} → {target}"


def design_shrink(row: dict[str, Any]) -> float:
    """S = λ·Σ_t η_t of the run's command line (the linear schedule with ceil(0.1 · steps) warm-up steps); not
    used for SPD, whose λ is in its own units."""
    command = row.get("command") or []
    lam = float(row["settings"].get("weight_decay", _flag(command, "weight_decay") or 0))
    steps = int(_flag(command, "max_steps") or 0)
    lr = float(_flag(command, "learning_rate") or 0)
    return lam * lr_sum(lr, steps, math.ceil(WARMUP_FRACTION * steps))


def _log_history(out: Path, row: dict[str, Any]) -> list[dict[str, Any]]:
    path = out / row.get("run_dir", "") / "trainer_state.json"
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("log_history", [])


def last_train_loss(history: Sequence[dict[str, Any]]) -> float | None:
    """The last logged training loss (``loss`` entries; the run's mean ``train_loss`` is not it)."""
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return losses[-1] if losses else None


def distance_to_init(history: Sequence[dict[str, Any]]) -> dict[str, float] | None:
    """The last logged ‖θ_d − θ₀_d‖ per depth ``DD``, or None where the run did not log it."""
    for entry in reversed(history):
        found = {k[len(DISTANCE_PREFIX):]: float(v) for k, v in entry.items()
                 if k.startswith(DISTANCE_PREFIX)}
        if found:
            return found
    return None


def summarize_setting(
    out: Path, spd: tuple[str, str] | None = None, metric: str = METRIC
) -> list[dict[str, Any]]:
    """One entry per cell (arm at its λ): ``metric`` per seed, the paired difference to no decay, the losses
    and the distances to θ₀."""
    rows = read_results(out / "results.jsonl")
    cells: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        cells[json.dumps(row["settings"], sort_keys=True)].append(row)
    summaries = []
    for key, cell_rows in cells.items():
        arm = arm_name(cell_rows[0]["settings"], spd)
        histories = {int(r["seed"]): _log_history(out, r) for r in cell_rows}
        distances = [d for d in (distance_to_init(h) for h in histories.values()) if d]
        depths = sorted({depth for d in distances for depth in d})
        summaries.append({
            "settings": json.loads(key),
            "arm": arm,
            "S": None if arm.startswith("SPD") else design_shrink(cell_rows[0]),
            "recorded_S": mean_std([r["shrink"] for r in cell_rows if r.get("shrink") is not None])[0],
            "metric": {int(r["seed"]): float(r["metrics"][metric]) for r in cell_rows
                       if metric in r["metrics"]},
            "eval_loss": {int(r["seed"]): float(r["metrics"]["eval_loss"]) for r in cell_rows
                          if "eval_loss" in r["metrics"]},
            "last_train_loss": {s: v for s, v in ((s, last_train_loss(h)) for s, h in histories.items())
                                if v is not None},
            "distance_to_init": {d: mean_std([x[d] for x in distances if d in x])[0] for d in depths} or None,
        })
    reference = next((s for s in summaries if s["arm"] == "no decay"), None)
    for s in summaries:
        diffs = paired_differences(s["metric"], reference["metric"]) if reference else []
        s["diff_to_no_decay"] = t_interval(diffs) if reference is not None and s is not reference else None
        s["loss_gap"] = t_interval(paired_differences(s["eval_loss"], s["last_train_loss"]))
    return sorted(summaries, key=lambda s: (s["arm"] != "no decay", s["arm"], s["S"] or 0.0,
                                            float(s["settings"].get("weight_decay", 0))))


MERGED_SUFFIXES = ("_target", "_spd")
"""``run.sh``'s folder suffixes whose folders of one setting make one table."""


def merge_folders(
    parts: Sequence[tuple[str, list[dict[str, Any]]]],
) -> tuple[list[dict[str, Any]], list[str]]:
    """The summaries of one setting's folders as one list, and notes on their no-decay runs.

    Each summary keeps its own folder's paired difference (``folder`` says which).  The first folder's
    no-decay row stands for all; another folder's is compared with it on the seeds both have (the same runs:
    equal metrics expected) and kept, labelled, only where they differ.
    """
    merged: list[dict[str, Any]] = []
    notes: list[str] = []
    first: tuple[str, dict[str, Any]] | None = None
    for folder, summaries in parts:
        reference = next((s for s in summaries if s["arm"] == "no decay"), None)
        for s in summaries:
            s["folder"] = folder
            if s is not reference or first is None:
                merged.append(s)
        if reference is None:
            continue
        if first is None:
            first = (folder, reference)
            continue
        common = sorted(set(reference["metric"]) & set(first[1]["metric"]))
        differ = [seed for seed in common if reference["metric"][seed] != first[1]["metric"][seed]]
        if differ:
            merged.append(reference)
            notes.append(f"The no-decay runs of `{folder}` and `{first[0]}` differ on seeds {differ} (of "
                         f"{common}): both rows are shown; each arm is paired with its own folder's.")
        else:
            notes.append(f"The no-decay runs of `{folder}` equal those of `{first[0]}` on the {len(common)} "
                         f"seeds both have ({common}): one row shown.")
    order = {folder: i for i, (folder, _) in enumerate(parts)}
    merged.sort(key=lambda s: (s["arm"] != "no decay", order[s["folder"]], s["arm"],
                               float(s["settings"].get("weight_decay", 0))))
    return merged, notes


def setting_table(summaries: Sequence[dict[str, Any]], label: str = "dev accuracy (%)") -> str:
    """The arms' table; ``label`` names the metric (×100)."""
    folders = any("folder" in s for s in summaries)
    lines = [f"| arm | λ | design S | recorded S | {label} | − no decay, paired [95 %] | "
             "dev loss − last train loss [95 %] |" + (" runs |" if folders else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if folders else "")]
    for s in summaries:
        mean, std, n = mean_std(list(s["metric"].values()))
        diff = "" if s["diff_to_no_decay"] is None else fmt_diff(*s["diff_to_no_decay"], scale=100)
        gap = fmt_diff(*s["loss_gap"], digits=3) if s["loss_gap"][2] else "–"
        recorded = "–" if math.isnan(s["recorded_S"]) else f"{s['recorded_S']:.3g}"
        design = "–" if s["S"] is None else f"{s['S']:.3g}"
        lines.append(f"| {s['arm']} | {s['settings'].get('weight_decay', '')} | {design} | {recorded} | "
                     f"{100 * mean:.1f} ± {100 * std:.1f} ({n}) | {diff} | {gap} |"
                     + (f" `{s.get('folder', '')}` |" if folders else ""))
    return "\n".join(lines)


def distance_table(summaries: Sequence[dict[str, Any]]) -> str:
    with_distance = [s for s in summaries if s["distance_to_init"]]
    if not with_distance:
        return (f"No run logged `{DISTANCE_PREFIX}DD` (‖θ_d − θ₀_d‖ per depth): the Trainer does not log "
                "it yet (see the README's 'Needed from other files').")
    depths = sorted({d for s in with_distance for d in s["distance_to_init"]})
    lines = ["| arm | design S | " + " | ".join(f"depth {d}" for d in depths) + " |",
             "|---|---|" + "---|" * len(depths)]
    for s in with_distance:
        values = " | ".join(f"{s['distance_to_init'].get(d, math.nan):.3g}" for d in depths)
        design = f"– (λ = {s['settings'].get('weight_decay')})" if s["S"] is None else f"{s['S']:.3g}"
        lines.append(f"| {s['arm']} | {design} | {values} |")
    return "\n".join(lines)


def gap_table(out: Path) -> str | None:
    """``small_gap``: accuracy and loss on the training sentences against dev (the same runs, paired by
    seed)."""
    rows = read_results(out / "results.jsonl")
    if not rows:
        return None
    by_file: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
    for row in rows:
        by_file[row["settings"]["validation_file"]][int(row["seed"])] = row["metrics"]
    train = [f for f in by_file if "glue/SST-2/dev.tsv" not in f]
    dev = [f for f in by_file if "glue/SST-2/dev.tsv" in f]
    if not train or not dev:
        return "Only one of the two evaluations has finished."
    on_train, on_dev = by_file[train[0]], by_file[dev[0]]
    lines = ["| | on its training sentences | on dev | training − dev, paired [95 %] |", "|---|---|---|---|"]
    for key, scale, digits in ((METRIC, 100, 1), ("eval_loss", 1, 3)):
        a = {s: m[key] for s, m in on_train.items() if key in m}
        b = {s: m[key] for s, m in on_dev.items() if key in m}
        ma, sa, na = mean_std(list(a.values()))
        mb, sb, nb = mean_std(list(b.values()))
        diff = fmt_diff(*t_interval(paired_differences(a, b)), scale=scale, digits=digits)
        lines.append(f"| {key} | {scale * ma:.{digits}f} ± {scale * sa:.{digits}f} ({na}) | "
                     f"{scale * mb:.{digits}f} ± {scale * sb:.{digits}f} ({nb}) | {diff} |")
    return "\n".join(lines)


def plot_setting(out_root: Path, name: str, summaries: Sequence[dict[str, Any]]) -> list[str]:
    """The metric against the design S per arm (no decay as a band: mean ± std), and ‖θ − θ₀‖ per depth."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    arms: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for s in summaries:
        mean, std, _ = mean_std(list(s["metric"].values()))
        if s["arm"] == "no decay":
            ax.axhline(100 * mean, color="grey", lw=1, label="no decay (± std)")
            ax.axhspan(100 * (mean - std), 100 * (mean + std), color="grey", alpha=0.15)
        elif s["S"]:  # SPD (no design S) is in the tables only
            arms[s["arm"]].append((s["S"], 100 * mean, 100 * std))
    for i, (arm, points) in enumerate(sorted(arms.items())):
        xs, ys, es = zip(*sorted(points), strict=True)
        ax.errorbar([x * 1.03 ** (i - len(arms) / 2) for x in xs], ys, yerr=es, marker="osD^vPX"[i % 7],
                    capsize=3, label=arm)
    ax.set_xscale("log")
    ax.set_xlabel("design shrink S = λ·Σ_t η_t")
    ax.set_ylabel("SST-2 dev accuracy (%)")
    ax.set_title(f"Q6 {name}: mean ± std over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(f"{name}_accuracy_vs_S.png")
    fig.savefig(out_root / written[-1], dpi=120)
    plt.close(fig)
    with_distance = [s for s in summaries if s["distance_to_init"]]
    if with_distance:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for i, s in enumerate(with_distance):
            depths = sorted(s["distance_to_init"])
            ax.plot([int(d) for d in depths], [s["distance_to_init"][d] for d in depths],
                    marker="osD^vPX"[i % 7], label=f"{s['arm']}, λ={s['settings'].get('weight_decay')}")
        ax.set_xlabel("depth")
        ax.set_ylabel("‖θ_d − θ₀_d‖₂ at the end")
        ax.set_title(f"Q6 {name}: distance to the pretrained weights")
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(f"{name}_distance_to_init.png")
        fig.savefig(out_root / written[-1], dpi=120)
        plt.close(fig)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-root", default="benchmarks/results/study_q6", help="folder of the compare outputs")
    p.add_argument("--arms-suffix", default="",
                   help="the settings' folder suffix (run.sh's ARMS: _target, _spd, _zero); _target and _spd "
                   "read both folders of a setting and merge them")
    p.add_argument("--spd", default="", help="KEY=VALUE: the grid key and value of the SPD arms (run.sh's "
                   "SPD_KEY=SPD_ON)")
    args = p.parse_args(argv)
    spd = tuple(args.spd.split("=", 1)) if "=" in args.spd else None
    out_root = Path(args.out_root)
    parts, record = ["# Study Q6: summary (written by benchmarks/study_q6/summary.py)", ""], {}
    merged_suffixes = MERGED_SUFFIXES if args.arms_suffix in MERGED_SUFFIXES else (args.arms_suffix,)
    for name in SETTINGS:
        folders = [out_root / f"{name}{suffix}" for suffix in merged_suffixes]
        found = [(f.name, summarize_setting(f, spd)) for f in folders]
        found = [(folder, summaries) for folder, summaries in found if summaries]
        if not found:
            continue
        summaries, notes = merge_folders(found) if len(found) > 1 else (found[0][1], [])
        record[name] = summaries
        plots = plot_setting(out_root, name, summaries)
        reports = ", ".join(f"`{folder}/report.md`" for folder, _ in found)
        parts += [f"## {name} ({reports}: compare's own tables and plots)", "", setting_table(summaries), "",
                  *notes, *([""] if notes else []), "‖θ − θ₀‖ per depth at the end (mean over seeds):", "",
                  distance_table(summaries), ""] + [f"![{p}]({p})" for p in plots] + [""]
    gap = gap_table(out_root / "small_gap")
    if gap:
        parts += ["## small: train/dev gap without decay (`small_gap`)", "", gap, ""]
    if len(parts) == 2:
        raise SystemExit(f"summary: no finished run under {out_root}: run benchmarks/study_q6/run.sh first")
    (out_root / "summary.md").write_text("\n".join(parts), encoding="utf-8")
    with open(out_root / "summary.json", "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, default=str, allow_nan=True)
    print(f"wrote {out_root / 'summary.md'}")


if __name__ == "__main__":
    main()
