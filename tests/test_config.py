"""LPWDConfig: JSON round trip, strict loading, Hub upload (recorded, never sent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_lpwd import LPWDConfig, __version__
from hf_lpwd.config import LPWD_CONFIG_NAME


def full_config() -> LPWDConfig:
    return LPWDConfig(
        mode="lpwd", weight_decay=0.3, layer_pattern=r"\.layers\.(\d+)\.", decay_embeddings=False,
        base_optimizer="adamw_torch_fused",
        base_optimizer_kwargs={"lr": 1e-3, "betas": [0.9, 0.999], "fused": True},
        num_blocks=2, depth_weight_decay={"1": 0.15, "2": 0.225, "3": 0.3},
    )


def test_round_trip_is_equal_and_byte_stable(tmp_path: Path) -> None:
    cfg = full_config()
    cfg.save_pretrained(tmp_path)
    first = (tmp_path / LPWD_CONFIG_NAME).read_bytes()
    loaded = LPWDConfig.from_pretrained(tmp_path)
    assert loaded == cfg
    loaded.save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / LPWD_CONFIG_NAME).read_bytes() == first
    assert json.loads(first) == {
        "base_optimizer": "adamw_torch_fused",
        "base_optimizer_kwargs": {"betas": [0.9, 0.999], "fused": True, "lr": 0.001},
        "cautious": False,
        "decay_embeddings": False,
        "decay_target": "zero",
        "decay_timescale": None,
        "depth_shrink": None,
        "depth_weight_decay": {"1": 0.15, "2": 0.225, "3": 0.3},
        "layer_lr_decay": 1.0,
        "layer_pattern": r"\.layers\.(\d+)\.",
        "layerwise": True,
        "lpwd_version": __version__,
        "lr_coupling": "coupled",
        "mode": "lpwd",
        "num_blocks": 2,
        "shrink": None,
        "spd": False,
        "stochastic_rounding": True,
        "tied_depth": "input",
        "weight_decay": 0.3,
    }
    assert LPWDConfig.from_pretrained(tmp_path / LPWD_CONFIG_NAME) == cfg  # a file path works too


@pytest.mark.parametrize(
    "kwargs,timing,layerwise",
    [
        ({"mode": "lpwd"}, "pwd", True),
        ({"mode": "pwd"}, "pwd", False),
        ({"mode": "rwd"}, "rwd", False),
        ({"mode": "wd"}, "wd", False),
        ({"mode": "wd", "layerwise": True}, "wd", True),
        ({"mode": "rwd", "layerwise": True}, "rwd", True),
        ({"mode": "pwd", "layerwise": True}, "pwd", True),
        ({"mode": "lpwd", "layerwise": True}, "pwd", True),
    ],
)
def test_timing_and_profile_are_independent(kwargs: dict, timing: str, layerwise: bool) -> None:
    cfg = LPWDConfig(**kwargs)
    assert (cfg.timing, cfg.layerwise) == (timing, layerwise)


@pytest.mark.parametrize("mode,layerwise", [("wd", False), ("rwd", False), ("pwd", False), ("lpwd", True)])
def test_a_config_written_by_0_1_0_loads_and_means_the_same(tmp_path: Path, mode: str,
                                                            layerwise: bool) -> None:
    """0.1.0 wrote no layerwise / layer_lr_decay / tied_depth keys: the profile followed the mode."""
    old = {"base_optimizer": "adamw_torch_fused", "base_optimizer_kwargs": {}, "decay_embeddings": True,
           "depth_weight_decay": None, "layer_pattern": None, "lpwd_version": "0.1.0", "mode": mode,
           "num_blocks": None, "stochastic_rounding": True, "weight_decay": 0.2}
    (tmp_path / LPWD_CONFIG_NAME).write_text(json.dumps(old))
    cfg = LPWDConfig.from_pretrained(tmp_path)
    assert (cfg.mode, cfg.layerwise, cfg.layer_lr_decay, cfg.tied_depth, cfg.weight_decay) == (
        mode, layerwise, 1.0, "input", 0.2)
    assert (cfg.lr_coupling, cfg.cautious, cfg.decay_timescale) == ("coupled", False, None)


def test_a_config_written_by_0_2_0_loads_and_means_coupled_not_cautious_no_timescale(tmp_path: Path) -> None:
    old = {"base_optimizer": "adamw_torch_fused", "base_optimizer_kwargs": {"betas": [0.9, 0.999]},
           "decay_embeddings": True, "depth_weight_decay": {"1": 0.05, "2": 0.1}, "layer_lr_decay": 0.9,
           "layer_pattern": None, "layerwise": True, "lpwd_version": "0.2.0", "mode": "lpwd", "num_blocks": 2,
           "stochastic_rounding": True, "tied_depth": "output", "weight_decay": 0.1}
    (tmp_path / LPWD_CONFIG_NAME).write_text(json.dumps(old))
    cfg = LPWDConfig.from_pretrained(tmp_path)
    assert ((cfg.lr_coupling, cfg.cautious, cfg.decay_timescale, cfg.depth_shrink)
            == ("coupled", False, None, None))
    assert (cfg.layer_lr_decay, cfg.tied_depth, cfg.weight_decay, cfg.timing) == (0.9, "output", 0.1, "pwd")


@pytest.mark.parametrize(
    "content,match",
    [
        ({"mode": "l2"}, r"LPWDConfig.mode='l2'"),
        ({"weight_decay": -1}, r"LPWDConfig.weight_decay=-1.0"),
        ({"weight_decay": "0.1"}, r"LPWDConfig.weight_decay must be a number"),
        ({"weight_decay": float("nan")}, r"LPWDConfig.weight_decay=nan"),
        ({"decay_embeddings": "yes"}, r"LPWDConfig.decay_embeddings must be true or false"),
        ({"layer_pattern": "layers"}, r"LPWDConfig.layer_pattern=.*exactly one"),
        ({"num_blocks": -2}, r"LPWDConfig.num_blocks"),
        ({"depth_weight_decay": {"head": 0.1}}, r"LPWDConfig.depth_weight_decay\['head'\]"),
        ({"base_optimizer_kwargs": [1, 2]}, r"LPWDConfig.base_optimizer_kwargs must be a JSON object"),
        ({"learning_rate": 1e-3}, r"unknown LPWD config key\(s\) \['learning_rate'\]"),
        ({"future_knob": 1, "lpwd_version": "99.0.0"}, r"written by hf_lpwd 99.0.0.*Upgrade"),
        ({"mode": "lpwd", "layerwise": False},
         r"LPWDConfig.mode='lpwd'.*LPWDConfig.layerwise=False.*use LPWDConfig.mode='pwd'"),
        ({"layerwise": "yes"}, r"LPWDConfig.layerwise must be true or false"),
        ({"layer_lr_decay": 0}, r"LPWDConfig.layer_lr_decay=0 must be in \(0, 1\]"),
        ({"layer_lr_decay": 1.5}, r"LPWDConfig.layer_lr_decay=1.5 must be in \(0, 1\]"),
        ({"layer_lr_decay": "0.9"}, r"LPWDConfig.layer_lr_decay must be a number"),
        ({"lr_coupling": "sqrt"}, r"LPWDConfig.lr_coupling='sqrt' is not one of \['coupled', 'independent'"),
        ({"mode": "lpwd", "cautious": True},
         r"LPWDConfig.cautious=true needs the wd timing.*pwd decays before"),
        ({"cautious": "yes", "mode": "wd"}, r"LPWDConfig.cautious must be true or false"),
        ({"decay_timescale": 0}, r"LPWDConfig.decay_timescale=0.0 must be a number of epochs > 0"),
        ({"decay_timescale": -3.0}, r"LPWDConfig.decay_timescale=-3.0 must be a number of epochs > 0"),
        ({"depth_shrink": {"1": -0.5}}, r"LPWDConfig.depth_shrink\['1'\]=-0.5"),
        # a record that loads must save again: JSON has no NaN or infinity to write
        ({"depth_weight_decay": {"1": float("nan")}}, r"LPWDConfig.depth_weight_decay\['1'\]=nan.*finite"),
        ({"depth_shrink": {"2": float("inf")}}, r"LPWDConfig.depth_shrink\['2'\]=inf.*finite"),
        ({"shrink": float("inf")}, r"LPWDConfig.shrink must be a finite number >= 0, got inf"),
        ({"tied_depth": "head"}, r"LPWDConfig.tied_depth='head' is not one of \['input', 'output'\]"),
    ],
)
def test_bad_files_are_refused_naming_the_key(tmp_path: Path, content: dict, match: str) -> None:
    (tmp_path / LPWD_CONFIG_NAME).write_text(json.dumps(content))
    with pytest.raises(ValueError, match=match):
        LPWDConfig.from_pretrained(tmp_path)


def test_not_json_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / LPWD_CONFIG_NAME).write_bytes(b"\x80\x04pickle")
    with pytest.raises(ValueError, match="not valid JSON"):
        LPWDConfig.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="has no lpwd_config.json"):
        LPWDConfig.from_pretrained(tmp_path / "..")
    with pytest.raises(FileNotFoundError, match="no such file"):
        LPWDConfig.from_pretrained(str(tmp_path / "nope" / "deeper"))


def test_a_failed_save_leaves_the_old_file_intact(tmp_path: Path, monkeypatch) -> None:
    """The disk fills up half-way through writing: the old file stays as it was, and no stray file is left."""
    import builtins

    import hf_lpwd.config as config_module

    good = full_config()
    good.save_pretrained(tmp_path)
    before = (tmp_path / LPWD_CONFIG_NAME).read_bytes()

    class HalfWriter:
        def __init__(self, file):
            self.file = file

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, text):
            self.file.write(text[: len(text) // 2])
            raise OSError(28, "No space left on device")

    real_open = builtins.open
    monkeypatch.setattr(config_module, "open", lambda *a, **k: HalfWriter(real_open(*a, **k)), raising=False)
    changed = full_config()
    changed.weight_decay = 0.9
    with pytest.raises(OSError, match="No space left"):
        changed.save_pretrained(tmp_path)
    assert (tmp_path / LPWD_CONFIG_NAME).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [LPWD_CONFIG_NAME]


def test_an_invalid_config_is_not_written(tmp_path: Path) -> None:
    bad = full_config()
    bad.weight_decay = -1.0  # made invalid after construction
    with pytest.raises(ValueError, match="weight_decay"):
        bad.save_pretrained(tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_push_to_hub_uploads_the_json(monkeypatch) -> None:
    """The Hub cannot be reached here: record what huggingface_hub would be asked to do."""
    import huggingface_hub

    calls: list[tuple] = []

    class RecordingApi:
        def __init__(self, **kwargs):
            calls.append(("init", kwargs.get("library_name")))

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create_repo", repo_id, exist_ok))
            return type("RepoUrl", (), {"repo_id": "me/" + repo_id})()

        def upload_file(self, *, path_or_fileobj, path_in_repo, repo_id, revision, commit_message, create_pr):
            calls.append(("upload_file", repo_id, path_in_repo, path_or_fileobj, commit_message))
            return "commit-url"

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    cfg = full_config()
    assert cfg.push_to_hub("tiny-lpwd") == "commit-url"
    assert calls[0] == ("init", "hf_lpwd")
    assert calls[1] == ("create_repo", "tiny-lpwd", True)
    _, repo, path, payload, message = calls[2]
    assert (repo, path, message) == ("me/tiny-lpwd", LPWD_CONFIG_NAME, "Upload LPWD config")
    assert LPWDConfig.from_dict(json.loads(payload)) == cfg


def test_hub_id_goes_through_hf_hub_download(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub

    full_config().save_pretrained(tmp_path)
    asked = {}

    def fake_download(**kwargs):
        asked.update(kwargs)
        return str(tmp_path / LPWD_CONFIG_NAME)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert LPWDConfig.from_pretrained("someone/model", revision="v1") == full_config()
    assert ((asked["repo_id"], asked["filename"], asked["revision"])
            == ("someone/model", LPWD_CONFIG_NAME, "v1"))


def test_model_card_section_states_the_settings() -> None:
    text = full_config().model_card_section()
    assert "## Weight decay: LPWD" in text
    assert "`lpwd`" in text and "| λ (weight_decay) | 0.3 |" in text and "| blocks (N) | 2 |" in text
    assert "1: 0.15, 2: 0.225, 3: 0.3" in text
    assert "| timing / profile | pwd / layer-wise |" in text
    llrd = LPWDConfig(mode="wd", layerwise=True, layer_lr_decay=0.8).model_card_section()
    assert "| timing / profile | wd / layer-wise |" in llrd and "| layer-wise lr decay γ | 0.8 |" in llrd


def test_from_pretrained_expands_home_and_names_a_missing_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    LPWDConfig(mode="wd", weight_decay=0.2).save_pretrained(tmp_path / "run1")
    assert LPWDConfig.from_pretrained("~/run1").weight_decay == 0.2
    monkeypatch.chdir(tmp_path)
    # one '/' reads as a Hub id too; not found there either, the error names the local path first
    message = r"^run2/final: no such local folder or file \(from .*\), and as a Hub repo id: "
    with pytest.raises(FileNotFoundError, match=message):
        LPWDConfig.from_pretrained("run2/final", local_files_only=True)


@pytest.mark.parametrize(
    "settings,rule",
    [
        (dict(mode="wd"), "θ ← θ − ηu − dθ"),
        (dict(mode="wd", decay_target="init", cautious=True),
         "θ ← θ − ηu − d(θ − θ₀), decayed only where u⊙(θ − θ₀) ≥ 0 (cautious)"),
        (dict(mode="rwd", decay_target="init"), "θ ← θ₀ + (1 − d)(θ − ηu − θ₀)"),
        (dict(mode="lpwd", decay_target="init"), "θ ← θ₀ + (1 − d)(θ − θ₀) before each forward pass"),
        (dict(mode="rwd", decay_target="init", spd=True, weight_decay=1.0),
         "timing rwd (the base steps without decay), selective projection decay (SPD) toward θ₀"),
    ],
)
def test_the_cards_sentence_states_the_rule_toward_the_target(settings: dict, rule: str) -> None:
    card = LPWDConfig(**{"weight_decay": 0.1, **settings}).model_card_section()
    assert rule in card


def test_a_layer_pattern_with_a_pipe_stays_one_table_cell() -> None:
    from markdown_it import MarkdownIt  # transformers' CLI brings it (typer -> rich)

    pattern = r"(?:attentions|ffns)\.(\d+)\."
    card = LPWDConfig(mode="lpwd", layer_pattern=pattern).model_card_section()
    table = "\n".join(line for line in card.splitlines() if line.startswith("|"))
    html = MarkdownIt("commonmark").enable("table").render(table)
    row = html.split("<td>layer pattern</td>")[1].split("</tr>")[0]
    assert row.strip() == f"<td><code>{pattern}</code></td>"


def test_save_pretrained_with_push_to_hub_writes_then_uploads(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub

    uploads: list[tuple[str, str, dict]] = []

    class RecordingApi:
        def __init__(self, **kwargs):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_file(self, *, path_or_fileobj, path_in_repo, repo_id, revision, commit_message, create_pr):
            uploads.append((repo_id, path_in_repo, json.loads(path_or_fileobj)))

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    full_config().save_pretrained(tmp_path / "my-model", push_to_hub=True)
    assert LPWDConfig.from_pretrained(tmp_path / "my-model") == full_config()
    assert uploads == [("my-model", LPWD_CONFIG_NAME, json.loads(full_config().to_json_string()))]
    full_config().save_pretrained(tmp_path / "other", push_to_hub=True, repo_id="me/named")
    assert uploads[-1][0] == "me/named"


def test_the_0_3_0_fixture_config_loads_and_means_the_same() -> None:
    """tests/data/checkpoint_v0_3_0: every 0.3.0 key, the run's record beside the settings."""
    cfg = LPWDConfig.from_pretrained(Path(__file__).parent / "data" / "checkpoint_v0_3_0" / "checkpoint-3")
    assert (cfg.mode, cfg.timing, cfg.layerwise, cfg.weight_decay, cfg.lr_coupling, cfg.cautious) == (
        "lpwd", "pwd", True, 0.5, "coupled", False)
    assert cfg.record.num_blocks == cfg.num_blocks == 3
    assert cfg.record.depth_weight_decay == {"0": 0.1, "1": 0.2, "2": 0.3, "3": 0.4, "4": 0.5}  # λ(d+1)/(N+2)
    assert cfg.record.shrink == 0.006 and cfg.lpwd_version == "0.3.0"
    assert cfg.decay_target == "zero"  # before the target axis: decay toward zero
    assert cfg.spd is False  # before SPD: no selective decay
    assert json.loads(cfg.to_json_string()).keys() - {"decay_target", "spd"} == json.loads(
        (Path(__file__).parent / "data" / "checkpoint_v0_3_0" / "checkpoint-3" / LPWD_CONFIG_NAME).read_text()
    ).keys()


@pytest.mark.parametrize(
    ("version", "expected", "added_since"),
    [
        ("0.4.0", ("lpwd", True, 0.5, "init", False), {"spd"}),  # its new key: decay_target; SPD came after
        ("0.5.0", ("rwd", False, 0.5, "init", True), set()),  # its new key: spd (rwd toward θ₀ there)
    ],
)
def test_a_fixture_config_loads_with_its_new_keys(version: str, expected: tuple, added_since: set) -> None:
    """tests/data/checkpoint_v0_X_0: each release's new keys read as written, later keys at their defaults
    (off), every other key the same."""
    folder = Path(__file__).parent / "data" / f"checkpoint_v{version.replace('.', '_')}" / "checkpoint-3"
    cfg = LPWDConfig.from_pretrained(folder)
    assert (cfg.mode, cfg.layerwise, cfg.weight_decay, cfg.decay_target, cfg.spd) == expected
    assert cfg.lpwd_version == version and cfg.record.num_blocks == 3
    written = json.loads((folder / LPWD_CONFIG_NAME).read_text())
    assert json.loads(cfg.to_json_string()).keys() - added_since == written.keys()


def test_save_pretrained_keeps_a_cards_section_in_step_and_creates_none(tmp_path: Path) -> None:
    """A config saved into a folder whose card has an LPWD section rewrites that section (the card said
    λ = 0.3 while the folder's config said 0.7); a folder without a card, or whose card has no section,
    gets none."""
    from hf_lpwd.card import add_card_section

    model = tmp_path / "model"
    model.mkdir()
    (model / "README.md").write_text("---\ntags:\n- x\n---\n\n# My model\n", encoding="utf-8")
    add_card_section(model, LPWDConfig(mode="lpwd", weight_decay=0.3))
    LPWDConfig(mode="lpwd", weight_decay=0.7).save_pretrained(model)
    card = (model / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\ntags:\n- x\n---\n\n# My model\n")
    assert card.count("## Weight decay: LPWD") == 1
    assert "| λ (weight_decay) | 0.7 |" in card and "0.3" not in card
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "README.md").write_text("# Someone else's card\n", encoding="utf-8")
    LPWDConfig(mode="lpwd", weight_decay=0.7).save_pretrained(plain)
    LPWDConfig(mode="lpwd", weight_decay=0.7).save_pretrained(tmp_path / "bare")
    assert (plain / "README.md").read_text(encoding="utf-8") == "# Someone else's card\n"
    assert sorted(p.name for p in (tmp_path / "bare").iterdir()) == ["lpwd_config.json"]
