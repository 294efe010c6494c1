"""``--lpwd_tied_depth output`` reaches the optimizer a Trainer builds: flag or YAML → arguments → LPWDConfig
→ groups.

A Llama with ``tie_word_embeddings`` holds one matrix under two names (``model.embed_tokens.weight`` and
``lm_head.weight``).  ``input`` puts it at depth 0 (λ/(N+2), lr·γ^(N+1)), ``output`` at the head's depth N+1
(λ·(N+2)/(N+2) = λ, the full lr).  Each hand-over on the way (the argument, ``lpwd_config_from_args``,
``LPWDConfig.param_groups``) is needed for the second.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import HfArgumentParser

from hf_lpwd import LPWDTrainer, LPWDTrainingArguments
from tests.tiny import TokenDataset, tiny_llama

N, LAM, GAMMA = 2, 0.4, 0.5
TIED = "model.embed_tokens.weight"


def _tied_group(trainer: LPWDTrainer) -> dict:
    trainer.create_optimizer()
    (group,) = [g for g in trainer.lpwd_optimizer.param_groups if TIED in g["param_names"]]
    assert group["tied"] == [f"lm_head.weight = {TIED}"]
    return group


def _parsed(tmp_path: Path, source: str, tied_depth: str | None) -> LPWDTrainingArguments:
    parser = HfArgumentParser(LPWDTrainingArguments)
    settings = {"output_dir": str(tmp_path / "out"), "weight_decay": LAM, "lpwd_layer_lr_decay": GAMMA,
                "learning_rate": 1e-3, "use_cpu": True, "report_to": "none"}
    if tied_depth is not None:
        settings["lpwd_tied_depth"] = tied_depth
    if source == "argv":
        argv = [x for key, value in settings.items() for x in (f"--{key}", str(value))]
        (args,) = parser.parse_args_into_dataclasses(argv)
    else:
        path = tmp_path / "args.yaml"
        path.write_text("".join(f"{key}: {value}\n" for key, value in settings.items()))
        (args,) = parser.parse_yaml_file(str(path))
    return args


@pytest.mark.parametrize("source", ["argv", "yaml"])
@pytest.mark.parametrize("tied_depth", ["output", "input", None])
def test_tied_depth_from_flag_or_yaml_sets_the_tied_matrix_group(tmp_path: Path, source: str,
                                                                 tied_depth: str | None) -> None:
    args = _parsed(tmp_path, source, tied_depth)
    assert args.lpwd_tied_depth == (tied_depth or "input")
    trainer = LPWDTrainer(model=tiny_llama(tied=True), args=args,
                          train_dataset=TokenDataset(4, causal_lm=True))
    group = _tied_group(trainer)
    if tied_depth == "output":
        # the head's depth N+1: λ·(N+2)/(N+2), lr × γ^0
        assert ((group["depth"], group["weight_decay"], group["lr_multiplier"])
                == (N + 1, pytest.approx(LAM), 1.0))
        assert group["lr"] == pytest.approx(1e-3)
    else:  # input, also the default: depth 0, λ/(N+2), lr × γ^(N+1)
        assert (group["depth"], group["weight_decay"], group["lr_multiplier"]) == (
            0, pytest.approx(LAM / (N + 2)), GAMMA ** (N + 1))
    assert trainer.lpwd_config.tied_depth == (tied_depth or "input")

