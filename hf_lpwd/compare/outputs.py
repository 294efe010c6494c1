"""What a finished run left in its output folder: metrics, per-depth weight norms, the shrink S, its weights.

* ``all_results.json`` (or ``final/all_results.json``): every numeric metric; ``--metric`` picks the one
  reported;
* ``trainer_state.json``: the per-depth weight norms ``lpwd/weight_norm/depth_DD`` that ``LPWDTrainer`` logs
  (at the first and the last step whatever ``logging_steps`` is); the norm ratio is ‖θ‖ at the last log / ‖θ‖
  at the first (all depths together, ‖θ‖ = √Σ_d ‖θ_d‖²).  Without norms, ``norms_note`` says why in words;
* the shrink S: ``lpwd_config.json`` (or ``final/lpwd_config.json``) keys ``depth_shrink`` (``{depth: S_d}``)
  or ``shrink`` (the run's largest S); S of a run is the largest S_d. """

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from ..names import LPWD_CONFIG_NAME, NORM_LOG_PREFIX, RECORD_DEPTH_SHRINK_KEY, RECORD_SHRINK_KEY
from .errors import CompareError

__all__ = ["KEPT_BY_DEFAULT", "KEPT_WITH_WEIGHTS", "WEIGHT_SUFFIXES", "collect_outputs", "delete_weights"]

RESULTS_FILE = "all_results.json"
STATE_FILE = "trainer_state.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
KEPT_BY_DEFAULT = ("each run keeps its JSON files and its log (compare.log); its weights and checkpoints are "
                   "deleted once its results are read (--keep-weights keeps them)")
KEPT_WITH_WEIGHTS = "each run keeps everything it writes, weights and checkpoints included (--keep-weights)"
NO_STATE_NOTE = (
    f"the command wrote no {STATE_FILE} (not a Hugging Face Trainer run, or it saved no state), so "
    "there are no weight norms"
)
NOT_LPWD_NOTE = (f"no {LPWD_CONFIG_NAME} and no `{NORM_LOG_PREFIX}DD` logs: the command does not train with "
                 "LPWDTrainer (or LPWDMixin), which logs the per-depth weight norms")
NO_NORM_LOGS_NOTE = (
    f"an LPWDTrainer run, but its {STATE_FILE} logs no `{NORM_LOG_PREFIX}DD` norms: the norms "
    "were switched off (--lpwd_log_layer_norms false), or an hf_lpwd up to 0.3 logged them "
    "only every --logging_steps and the run was shorter"
)


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _first_file(run_dir: Path, name: str) -> Path | None:
    for candidate in (run_dir / name, run_dir / "final" / name):
        if candidate.is_file():
            return candidate
    return None


def _depth_values(entry: dict[str, Any], prefix: str) -> dict[str, float]:
    return {k[len(prefix):]: float(v) for k, v in entry.items()
            if k.startswith(prefix) and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _shrink_values(raw: Any) -> dict[str, float] | None:
    """``shrink`` of a saved lpwd_config.json: a number, a list indexed by depth, or ``{depth: S_d}``."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        return {"all": float(raw)}
    if isinstance(raw, list) and raw and all(isinstance(v, (int, float)) for v in raw):
        return {f"{d:02d}": float(v) for d, v in enumerate(raw)}
    if isinstance(raw, dict) and raw and all(isinstance(v, (int, float)) for v in raw.values()):
        return {(f"{int(k):02d}" if str(k).isdigit() else str(k)): float(v) for k, v in raw.items()}
    return None


def collect_outputs(run_dir: Path) -> dict[str, Any]:
    """The metrics, weight norms and shrink that a finished run left in ``run_dir`` (see the module
    docstring)."""
    run_dir = Path(run_dir)
    results_path = _first_file(run_dir, RESULTS_FILE)
    results = _read_json(results_path) if results_path else None
    if not isinstance(results, dict):
        raise CompareError(f"the run finished but wrote no readable {RESULTS_FILE} in {run_dir} (nor in its "
                           "final/): compare needs a command that saves its metrics there, as the Trainer's "
                           "save_metrics does")
    metrics = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out: dict[str, Any] = {"metrics": metrics, "norm_ratio": None, "weight_norms_first": None,
                           "weight_norms_last": None, "norms_note": None, "shrink": None,
                           "shrink_per_depth": None}
    state_path = _first_file(run_dir, STATE_FILE)
    state = _read_json(state_path) if state_path else None
    logs = state.get("log_history", []) if isinstance(state, dict) else []
    norm_logs = [d for d in (_depth_values(e, NORM_LOG_PREFIX) for e in logs if isinstance(e, dict)) if d]
    config_path = _first_file(run_dir, LPWD_CONFIG_NAME)
    config = _read_json(config_path) if config_path else None
    if norm_logs:
        first, last = norm_logs[0], norm_logs[-1]
        total_first = math.sqrt(sum(v * v for v in first.values()))
        total_last = math.sqrt(sum(v * v for v in last.values()))
        out.update(weight_norms_first=first, weight_norms_last=last,
                   norm_ratio=total_last / total_first if total_first > 0 else None)
    elif not isinstance(state, dict):
        out["norms_note"] = NO_STATE_NOTE
    elif not isinstance(config, dict):
        out["norms_note"] = NOT_LPWD_NOTE
    else:
        out["norms_note"] = NO_NORM_LOGS_NOTE
    if isinstance(config, dict):  # per depth where the run had depths, else the run's one S
        shrink = (_shrink_values(config.get(RECORD_DEPTH_SHRINK_KEY))
                  or _shrink_values(config.get(RECORD_SHRINK_KEY)))
        if shrink:
            out.update(shrink_per_depth=shrink, shrink=max(shrink.values()))
    return out


def delete_weights(run_dir: Path) -> None:
    """Remove model weights and checkpoints of a finished run (its JSON files and log stay)."""
    for path in sorted(Path(run_dir).rglob("*"), reverse=True):
        if path.is_dir() and path.name.startswith("checkpoint-"):
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() and path.suffix in WEIGHT_SUFFIXES:
            path.unlink(missing_ok=True)
