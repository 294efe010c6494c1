"""LPWDTrainer / LPWDMixin / LPWDTrainingArguments on tiny models built from configs (CPU)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from transformers import (
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

import hf_lpwd.trainer as trainer_module
import hf_lpwd.trainer.refusals as refusals
from hf_lpwd import LPWD, LPWDConfig, LPWDMixin, LPWDTrainer, LPWDTrainingArguments
from hf_lpwd.optim import lookahead
from tests.tiny import ROOT, TokenDataset, offline_env, tiny_bert, tiny_llama

SCRIPTS = Path(__file__).parent / "scripts"


def common_args(tmp_path: Path, **overrides) -> dict:
    args = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=5e-3, max_steps=4,
        report_to="none", use_cpu=True, disable_tqdm=True, seed=0, save_strategy="no", logging_steps=2,
        dataloader_num_workers=0,
    )
    args.update(overrides)
    return args


def params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# --------------------------------------------------------------------------- arguments
def test_arguments_parse_from_command_line_and_yaml(tmp_path: Path) -> None:
    parser = HfArgumentParser(LPWDTrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--weight_decay_mode", "rwd", "--weight_decay", "0.3",
         "--lpwd_layer_pattern", r"\.layer\.(\d+)\.", "--lpwd_decay_embeddings", "false", "--use_cpu"]
    )
    assert (args.weight_decay_mode, args.weight_decay, args.lpwd_decay_embeddings) == ("rwd", 0.3, False)
    assert args.lpwd_layer_pattern == r"\.layer\.(\d+)\."
    yaml_file = tmp_path / "args.yaml"
    yaml_file.write_text(f"output_dir: {tmp_path}\nweight_decay_mode: lpwd\nweight_decay: 0.1\n"
                         "use_cpu: true\n")
    (from_yaml,) = parser.parse_yaml_file(str(yaml_file))
    assert (from_yaml.weight_decay_mode, from_yaml.weight_decay) == ("lpwd", 0.1)
    assert LPWDTrainingArguments(output_dir=str(tmp_path), use_cpu=True).weight_decay_mode == "lpwd"


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"weight_decay_mode": "l2"}, r"--weight_decay_mode='l2'.*\['wd', 'rwd', 'pwd', 'lpwd'\]"),
        ({"weight_decay": -0.1}, r"--weight_decay=-0.1 must be a finite number >= 0"),
        ({"lpwd_layer_pattern": r"layers\.\d+"}, r"--lpwd_layer_pattern=.*exactly one"),
        ({"lpwd_layer_pattern": r"layers\.(\d+"}, r"--lpwd_layer_pattern=.*not a valid regular expression"),
    ],
)
def test_bad_arguments_name_the_field(tmp_path: Path, overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LPWDTrainingArguments(output_dir=str(tmp_path), use_cpu=True, **overrides)


def test_pattern_matching_nothing_fails_before_training_in_the_flags_words(tmp_path: Path) -> None:
    args = LPWDTrainingArguments(**common_args(tmp_path), weight_decay=0.1,
                                 lpwd_layer_pattern=r"\.blocks\.(\d+)\.")
    match = (r"^--lpwd_layer_pattern '\\\.blocks\\\.\(\\d\+\)\\\.' matched no parameter name\. "
             r"Names: 'bert\.embeddings.*Pass a --lpwd_layer_pattern whose capture group matches the block "
             r"index\. Or train without depths: --weight_decay_mode pwd, rwd or wd \(a uniform λ\) with "
             r"--lpwd_layer_lr_decay 1\.$")
    with pytest.raises(ValueError, match=match):
        LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(8))
    assert not (tmp_path / "out").exists()


def test_a_pattern_that_skips_blocks_is_refused_in_the_flags_words(tmp_path: Path) -> None:
    args = LPWDTrainingArguments(**common_args(tmp_path), weight_decay=0.1,
                                 lpwd_layer_pattern=r"\.layer\.(0)\.")
    match = (r"^--lpwd_layer_pattern '\\\.layer\\\.\(0\)\\\.' matched blocks of 'bert\.encoder\.layer\.' but "
             r"not 'bert\.encoder\.layer\.1\..*', which would sit outside the stack")
    with pytest.raises(ValueError, match=match):
        LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(8))
    assert not (tmp_path / "out").exists()


def test_a_model_without_blocks_is_refused_in_the_flags_words(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    args = LPWDTrainingArguments(**common_args(tmp_path), weight_decay=0.1, weight_decay_mode="lpwd")
    match = (r"^could not find a stack of repeated blocks .* in the parameter names: '0\.weight', '0\.bias', "
             r"'1\.weight', '1\.bias'\. Pass --lpwd_layer_pattern '\\\.blocks\\\.\(\\d\+\)\\\.' "
             r"\(a regex with one capture group for the block index\)\. Or train without depths: "
             r"--weight_decay_mode pwd")
    with pytest.raises(ValueError, match=match):
        LPWDTrainer(model=model, args=args)
    assert not (tmp_path / "out").exists()


def test_deepspeed_config_with_its_own_optimizer_is_refused(tmp_path: Path) -> None:
    """DeepSpeed's own optimizer section would bypass create_optimizer: refused, naming the key to remove."""
    from types import SimpleNamespace

    with_optimizer = {"zero_optimization": {"stage": 2},
                      "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}
    trainer_module.check_deepspeed(SimpleNamespace(hf_deepspeed_config=None,
                                                   deepspeed={"zero_optimization": {}}))
    with pytest.raises(ValueError, match=r"'optimizer' section.*Remove the 'optimizer' key"):
        trainer_module.check_deepspeed(SimpleNamespace(hf_deepspeed_config=SimpleNamespace(config=with_optimizer)))


# --------------------------------------------------------------------------- the optimizer it builds
@pytest.mark.parametrize("optim", ["adamw_torch_fused", "adamw_torch"])
def test_wd_mode_is_bitwise_the_stock_trainer(tmp_path: Path, optim: str) -> None:
    results = []
    for trainer_cls, args_cls, extra in (
        (Trainer, TrainingArguments, {}),
        (LPWDTrainer, LPWDTrainingArguments, {"weight_decay_mode": "wd"}),
    ):
        set_seed(0)
        model = tiny_bert()
        args = args_cls(**common_args(tmp_path, optim=optim, weight_decay=0.3, max_steps=6,
                                      lr_scheduler_type="cosine", warmup_steps=2), **extra)
        trainer = trainer_cls(model=model, args=args, train_dataset=TokenDataset(24))
        trainer.train()
        results.append(params_of(model))
    stock, ours = results
    assert stock.keys() == ours.keys()
    for name in stock:
        assert torch.equal(stock[name], ours[name]), name


@pytest.mark.parametrize(
    "optim,base_cls",
    [
        ("adamw_torch_fused", torch.optim.AdamW),
        ("adamw_torch", torch.optim.AdamW),
        ("sgd", torch.optim.SGD),
        ("adafactor", transformers.optimization.Adafactor),
    ],
)
def test_each_optim_becomes_the_base(tmp_path: Path, optim: str, base_cls: type) -> None:
    set_seed(0)
    model = tiny_bert()
    before = params_of(model)
    args = LPWDTrainingArguments(**common_args(tmp_path, optim=optim, weight_decay=0.2, max_steps=2))
    trainer = LPWDTrainer(model=model, args=args, train_dataset=TokenDataset(8))
    trainer.train()
    lpwd = trainer.lpwd_optimizer
    assert isinstance(lpwd, LPWD) and type(lpwd.base_optimizer) is base_cls and lpwd.mode == "pwd"
    assert all(not torch.equal(before[n], p) for n, p in params_of(model).items() if "weight" in n)
    # λ grows with depth: N = 2 blocks, n = 4 levels, head at the full λ, embeddings at λ/4.
    decay = {g["depth"]: g["weight_decay"] for g in lpwd.param_groups if g["weight_decay"] > 0}
    assert decay == pytest.approx({0: 0.05, 1: 0.1, 2: 0.15, 3: 0.2})


def test_pre_step_decays_once_per_optimizer_step_with_accumulation(tmp_path: Path, monkeypatch) -> None:
    """10 samples, batch 2, accumulation 2: groups of 2, 2, 1 micro-batches → 3 steps per epoch."""
    decays: list[int] = []
    original = LPWD.pre_step

    def counting_pre_step(self):
        pending = self.pre_step_pending
        original(self)
        if not pending:
            decays.append(trainer.state.global_step)

    monkeypatch.setattr(LPWD, "pre_step", counting_pre_step)
    args = LPWDTrainingArguments(**common_args(tmp_path, per_device_train_batch_size=2,
                                               gradient_accumulation_steps=2, num_train_epochs=2,
                                               max_steps=-1, weight_decay=0.1))
    trainer = LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(10))
    trainer.train()
    assert trainer.state.global_step == 6
    assert decays == [0, 1, 2, 3, 4, 5]  # exactly once per step, before its first micro-batch


def test_pre_step_uses_the_coming_steps_lr(tmp_path: Path, monkeypatch) -> None:
    seen: list[float] = []
    original = LPWD.pre_step

    def recording_pre_step(self):
        if not self.pre_step_pending:
            seen.append(self.param_groups[0]["lr"])
        original(self)

    monkeypatch.setattr(LPWD, "pre_step", recording_pre_step)
    args = LPWDTrainingArguments(**common_args(tmp_path, weight_decay=0.1, max_steps=4, warmup_steps=4,
                                               lr_scheduler_type="linear", learning_rate=4e-3))
    LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(16)).train()
    assert seen == pytest.approx([0.0, 1e-3, 2e-3, 3e-3])  # linear warm-up: step k runs at k/4·η


@pytest.mark.slow
def test_kill_and_resume_is_bitwise_an_uninterrupted_run(tmp_path: Path) -> None:
    env = offline_env()
    script = str(SCRIPTS / "train_tiny_bert.py")
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run([sys.executable, script, str(full)], check=True, env=env, timeout=300)
    proc = subprocess.run([sys.executable, script, str(killed), "--kill-after-save"], env=env, timeout=300)
    assert proc.returncode == -9  # SIGKILL right after checkpoint-3 was written
    assert (killed / "checkpoint-3" / "lpwd_config.json").is_file()
    assert not (killed / "final.pt").exists()
    subprocess.run([sys.executable, script, str(killed), "--resume", str(killed / "checkpoint-3")],
                   check=True, env=env, timeout=300)
    a, b = torch.load(full / "final.pt"), torch.load(killed / "final.pt")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # The warm-up starts at lr 0 and the scheduler is a LambdaLR: the fold predicted every step, before
    # and after the resume (the checkpoint carried the factor its weights hold).
    for run in (full, killed):
        assert json.loads((run / "fold.json").read_text()) == {"fold_corrections": 0}
    saved = torch.load(killed / "checkpoint-3" / "optimizer.pt", weights_only=False)
    assert all("lpwd_applied_decay" in g for g in saved["param_groups"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("version", "extra"),
    [("0.2.0", []), ("0.3.0", []), ("0.4.0", ["--decay-target", "init"]),
     ("0.5.0", ["--decay-target", "init", "--spd"])],
)
def test_an_old_checkpoint_resumes_bitwise_with_todays_code(
    tmp_path: Path, version: str, extra: list
) -> None:
    """tests/data/checkpoint_v0_X_0 (SOURCE.md): written by hf_lpwd 0.2.0 / 0.3.0 / 0.4.0 (target init: θ₀ in
    the optimizer state) / 0.5.0 (rwd + SPD toward θ₀) mid warm-up, one torch thread; resumed now, the run
    ends on that version's uninterrupted run's final parameters (group keys and state_dict layout unchanged).

    Bitwise on the machine that wrote the fixture (0.5.0's SPD: within 1.1e-8 absolute since 0.6.0 sums and
    decays in other compiled kernels); asserted to 1e-6 relative, plus 1e-7 absolute (5e-6 of the weights'
    scale 0.02: BERT's key biases get no gradient, softmax ignores them, and sit at ~1e-8 moved by Adam on
    rounding noise alone, where a relative tolerance means nothing), so that another CPU's kernels may round
    differently, while one decay factor too many or too few (~1e-3 of 0.02 here) or a lost Adam state fails
    by far.
    """
    data = ROOT / "tests" / "data" / f"checkpoint_v{version.replace('.', '_')}"
    checkpoint = tmp_path / "killed" / "checkpoint-3"
    shutil.copytree(data / "checkpoint-3", checkpoint)
    subprocess.run([sys.executable, str(SCRIPTS / "train_tiny_bert.py"), str(tmp_path / "killed"), "--resume",
                    str(checkpoint), *extra], check=True, env=offline_env(), timeout=300)
    assert json.loads((checkpoint / "lpwd_config.json").read_text())["lpwd_version"] == version
    old, new = torch.load(data / "final_uninterrupted.pt"), torch.load(tmp_path / "killed" / "final.pt")
    assert old.keys() == new.keys()
    for name in old:
        torch.testing.assert_close(new[name], old[name], rtol=1e-6, atol=1e-7, msg=name)
    assert json.loads((tmp_path / "killed" / "fold.json").read_text()) == {"fold_corrections": 0}


# --------------------------------------------------------------------------- logging and saving
def _bert_depth(name: str) -> int:
    """Depths of tiny_bert(layers=2), by hand: embeddings 0, encoder layer i → i+1, pooler and classifier
    3."""
    if name.startswith("bert.embeddings."):
        return 0
    if name.startswith("bert.encoder.layer."):
        return int(name.split(".")[3]) + 1
    assert name.startswith(("bert.pooler.", "classifier.")), name
    return 3


class _NormsAtLog(TrainerCallback):
    """‖θ‖₂ per depth straight from the model's parameters, at the moment of each training log."""

    def __init__(self) -> None:
        self.norms: list[dict[int, float]] = []

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):  # noqa: ANN001
        if "loss" in logs:
            tensors: dict[int, list[torch.Tensor]] = {}
            for name, param in model.named_parameters():
                tensors.setdefault(_bert_depth(name), []).append(param.detach().double().flatten())
            self.norms.append({d: float(torch.cat(ts).norm()) for d, ts in tensors.items()})


@pytest.mark.parametrize("enabled", [True, False])
def test_weight_norm_per_depth_is_logged(tmp_path: Path, enabled: bool) -> None:
    """Every depth of every training log equals the norm of that depth's parameters when it was logged."""
    args = LPWDTrainingArguments(**common_args(tmp_path, weight_decay=0.5, logging_steps=1, max_steps=3),
                                 lpwd_log_layer_norms=enabled)
    model = tiny_bert()
    at_log = _NormsAtLog()
    trainer = LPWDTrainer(model=model, args=args, train_dataset=TokenDataset(12), callbacks=[at_log])
    trainer.train()
    logged = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logged) == len(at_log.norms) == 3
    for log, direct in zip(logged, at_log.norms, strict=True):
        keys = sorted(k for k in log if k.startswith("lpwd/"))
        assert keys == ([f"lpwd/weight_norm/depth_{d:02d}" for d in range(4)] if enabled else [])
        got = {int(k.rsplit("_", 1)[1]): log[k] for k in keys}
        assert got == (pytest.approx(direct, rel=1e-5) if enabled else {})
    assert at_log.norms[0] != at_log.norms[-1]  # the weights moved between the logs: each log read them anew


def test_checkpoint_and_output_dir_carry_the_config_and_card(tmp_path: Path) -> None:
    args = LPWDTrainingArguments(**common_args(tmp_path, weight_decay=0.25, max_steps=2,
                                               save_strategy="steps", save_steps=2))
    trainer = LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(8))
    trainer.train()
    trainer.save_model()
    trainer.create_model_card(model_name="tiny")
    out = Path(args.output_dir)
    for folder in (out / "checkpoint-2", out):
        saved = LPWDConfig.from_pretrained(folder)
        assert (saved.mode, saved.weight_decay, saved.num_blocks) == ("lpwd", 0.25, 2)
        assert saved.depth_weight_decay == pytest.approx({"0": 0.0625, "1": 0.125, "2": 0.1875, "3": 0.25})
        assert saved.base_optimizer == "adamw_torch_fused"
        assert json.loads((folder / "lpwd_config.json").read_text())["base_optimizer_kwargs"]["fused"] is True
    card = (out / "README.md").read_text()
    assert "## Weight decay: LPWD" in card and "lpwd" in card and "| λ (weight_decay) | 0.25 |" in card


def test_config_from_a_checkpoint_rebuilds_identical_groups(tmp_path: Path) -> None:
    args = LPWDTrainingArguments(**common_args(tmp_path, weight_decay=0.3, max_steps=1, save_strategy="steps",
                                               save_steps=1), lpwd_decay_embeddings=False)
    model = tiny_bert(layers=3)
    trainer = LPWDTrainer(model=model, args=args, train_dataset=TokenDataset(8))
    trainer.train()
    built = trainer.lpwd_optimizer.param_groups
    rebuilt = LPWDConfig.from_pretrained(Path(args.output_dir) / "checkpoint-1").param_groups(model)
    keys = ("param_names", "weight_decay", "depth", "lpwd_multiplier")
    assert [{k: g[k] for k in keys} for g in rebuilt] == [{k: g[k] for k in keys} for g in built]
    assert [[id(p) for p in g["params"]] for g in rebuilt] == [[id(p) for p in g["params"]] for g in built]
    assert [g["weight_decay"] for g in built if g["depth"] == 0] == [0.0]  # decay_embeddings=False kept


def test_arguments_start_from_a_saved_config(tmp_path: Path) -> None:
    LPWDConfig(mode="rwd", weight_decay=0.4, decay_embeddings=False).save_pretrained(tmp_path / "cfg")
    args = LPWDTrainingArguments(output_dir=str(tmp_path), use_cpu=True, lpwd_config=str(tmp_path / "cfg"))
    assert (args.weight_decay_mode, args.weight_decay, args.lpwd_decay_embeddings) == ("rwd", 0.4, False)
    overridden = LPWDTrainingArguments(output_dir=str(tmp_path), use_cpu=True,
                                       lpwd_config=str(tmp_path / "cfg"), weight_decay=0.1)
    assert (overridden.weight_decay_mode, overridden.weight_decay) == ("rwd", 0.1)


# --------------------------------------------------------------------------- other models and trainers
def test_llama_causal_lm_with_lora_decays_adapters_by_depth(tmp_path: Path) -> None:
    import peft
    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    args = LPWDTrainingArguments(**common_args(tmp_path, weight_decay=0.4, max_steps=2))
    trainer = LPWDTrainer(model=model, args=args, train_dataset=TokenDataset(8, causal_lm=True))
    trainer.train()
    groups = trainer.lpwd_optimizer.param_groups
    names = {n for g in groups for n in g["param_names"]}
    assert names and all("lora_" in n for n in names)  # frozen base weights are left out
    by_depth = {g["depth"]: g["weight_decay"] for g in groups}
    assert by_depth == pytest.approx({1: 0.4 * 2 / 4, 2: 0.4 * 3 / 4})  # the adapters live in blocks 1 and 2


def test_t5_with_seq2seq_trainer_through_the_mixin(tmp_path: Path) -> None:
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, T5Config, T5ForConditionalGeneration

    class LPWDSeq2SeqTrainer(LPWDMixin, Seq2SeqTrainer):
        pass

    model = T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=2,
                                                num_decoder_layers=2, num_heads=2, decoder_start_token_id=0))
    args = Seq2SeqTrainingArguments(**common_args(tmp_path, weight_decay=0.6, max_steps=2))
    trainer = LPWDSeq2SeqTrainer(model=model, args=args, train_dataset=TokenDataset(8, seq2seq=True))
    trainer.train()
    groups = trainer.lpwd_optimizer.param_groups
    decay = {g["depth"]: g["weight_decay"] for g in groups if g["weight_decay"] > 0}
    # 2 encoder + 2 decoder blocks chained: n = 6 levels. The LM head is tied to the embeddings (depth 0),
    # so depth 5 holds only the decoder's final norm, which is not decayed.
    assert decay == pytest.approx({d: 0.6 * (d + 1) / 6 for d in range(5)})
    assert [g["param_names"] for g in groups if g["depth"] == 5] == [["decoder.final_layer_norm.weight"]]


@pytest.mark.parametrize("settings_from", ["lpwd_config", "flags"])
def test_trl_sft_trainer_through_the_mixin(tmp_path: Path, settings_from: str) -> None:
    """Settings as an ``lpwd_config``, or as flags of a config class that is both (README's pattern)."""
    import dataclasses

    import trl
    from datasets import Dataset

    class LPWDSFTTrainer(LPWDMixin, trl.SFTTrainer):
        pass

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i + 2 for i in range(62)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    data = Dataset.from_dict({"text": [" ".join(f"w{(i * 7 + j) % 60}" for j in range(10))
                                       for i in range(16)]})
    if settings_from == "lpwd_config":
        config = trl.SFTConfig(**common_args(tmp_path, weight_decay=0.2, max_steps=2), max_length=16)
        given = {"lpwd_config": LPWDConfig(mode="lpwd", weight_decay=0.2)}
    else:
        @dataclasses.dataclass
        class LPWDSFTConfig(trl.SFTConfig, LPWDTrainingArguments):
            pass

        # TRL's defaults stand (listed first, LPWDTrainingArguments' fields would bring transformers' own:
        # lr 5e-5 for 2e-5, bf16, gradient checkpointing), and that order is warned about
        plain = {f.name: getattr(trl.SFTConfig(output_dir=str(tmp_path), use_cpu=True), f.name)
                 for f in dataclasses.fields(trl.SFTConfig) if f.name in ("learning_rate", "logging_steps")}
        both = LPWDSFTConfig(output_dir=str(tmp_path), use_cpu=True)
        assert {name: getattr(both, name) for name in plain} == plain == {"learning_rate": 2e-5,
                                                                          "logging_steps": 10}
        with pytest.warns(UserWarning, match=r"takes TrainingArguments' defaults over SFTConfig's own: "
                                             r"learning_rate=5e-05 \(its 2e-05\).*list SFTConfig first"):
            @dataclasses.dataclass
            class Reversed(LPWDTrainingArguments, trl.SFTConfig):
                pass

        argv = [f"--{k}={v}" for k, v in common_args(tmp_path, weight_decay=0.2, max_steps=2).items()]
        (config,) = transformers.HfArgumentParser(LPWDSFTConfig).parse_args_into_dataclasses(
            [*argv, "--weight_decay_mode=lpwd", "--max_length=16"])
        assert config.max_length == 16 and config.weight_decay_mode == "lpwd"
        given = {}
    trainer = LPWDSFTTrainer(model=tiny_llama(), args=config, train_dataset=data, processing_class=tokenizer,
                             **given)
    before = params_of(trainer.model)
    trainer.train()
    lpwd = trainer.lpwd_optimizer
    assert lpwd.mode == "pwd"
    assert {g["depth"] for g in lpwd.param_groups} == {0, 1, 2, 3}
    # Tokens w60, w61 (ids 62, 63) never occur: their embedding rows get a zero gradient, Adam moves them by
    # exactly 0, and what is left is lpwd's decay of depth 0, λ/(N+2) = 0.05, at the linear schedule's
    # η_0 = 5e-3, η_1 = 2.5e-3 (the stock SFTTrainer would apply λ = 0.2 there: 4× the shrink).
    assert max(max(ids) for ids in trainer.train_dataset["input_ids"]) == 61
    unused = trainer.model.model.embed_tokens.weight.detach()[62:]
    shrink = (1 - 5e-3 * 0.05) * (1 - 2.5e-3 * 0.05)
    torch.testing.assert_close(unused, before["model.embed_tokens.weight"][62:] * shrink, rtol=1e-6, atol=0)
    moved = [n for n, p in params_of(trainer.model).items() if not torch.equal(before[n], p)]
    assert len(moved) == len(before)  # and every tensor trained (the others have gradients)


# --------------------------------------------------------------------------- pwd folded into the step
@pytest.mark.parametrize("warmup,expected_corrections", [(2, 0), (0, 4)])
def test_folded_pwd_equals_unfolded_pwd_in_the_trainer(tmp_path: Path, monkeypatch, warmup: int,
                                                       expected_corrections: int) -> None:
    """The Trainer hands LPWD its LambdaLR: every step's decay is folded into the previous AdamW call.

    Reference: the same run with the fold switched off (no next lr: the decay of each step is a separate
    pass before its forward, hf_lpwd 0.1.0's pwd). Without warm-up the first decay needs one pass per
    decayed group (4 depths here); with a warm-up from lr 0 none.
    """
    results = []
    for fold in (True, False):
        if not fold:
            monkeypatch.setattr(lookahead, "next_lr", lambda group, scheduler, num_training_steps, step: None)
        set_seed(0)
        model = tiny_bert()
        args = LPWDTrainingArguments(**common_args(tmp_path, weight_decay=2.0, max_steps=6,
                                                   warmup_steps=warmup, lr_scheduler_type="cosine",
                                                   learning_rate=2e-2))
        trainer = LPWDTrainer(model=model, args=args, train_dataset=TokenDataset(24))
        trainer.train()
        results.append((params_of(model), trainer.lpwd_optimizer.fold_corrections))
    (folded, corrections), (unfolded, _) = results
    assert corrections == expected_corrections
    # float32 rounding of another order of operations: observed ≤ 6e-7 of a tensor's norm.
    for name in folded:
        if "attention.self.key.bias" in name:
            # softmax is invariant to the key bias: its exact gradient is 0, the computed one is rounding
            # noise that Adam normalises into lr-sized steps, so it compares nothing.
            continue
        diff = (folded[name] - unfolded[name]).norm().item()
        assert diff <= 1e-5 * unfolded[name].norm().item() + 1e-7, (name, diff)


def test_layer_lr_decay_follows_the_schedule_per_group(tmp_path: Path, monkeypatch) -> None:
    """lr of the group at depth d = schedule(t)·γ^(N+1−d), and pwd's fold predicts each group's own lr.

    What the previous step folded in (the group's applied factor *before* ``pre_step()`` looks at it) must be
    1 − η_{d,t}·λ_d for the coming step, so that ``pre_step()`` has nothing to correct (step 0: nothing folded
    yet, and the warm-up's lr 0 needs nothing).
    """
    seen: list[list[tuple[int, float, float, float | None]]] = []
    corrections: list[int] = []
    original = LPWD.pre_step

    def recording_pre_step(self):
        first = not self.pre_step_pending
        if first:
            seen.append([(g["depth"], g["lr"], g["weight_decay"], g.get("lpwd_applied_decay"))
                         for g in self.param_groups])
        original(self)
        if first:
            corrections.append(self.fold_corrections)

    monkeypatch.setattr(LPWD, "pre_step", recording_pre_step)
    gamma, lr, lam = 0.5, 4e-3, 0.5
    args = LPWDTrainingArguments(**common_args(tmp_path, weight_decay=lam, max_steps=6, warmup_steps=2,
                                               lr_scheduler_type="linear", learning_rate=lr),
                                 lpwd_layer_lr_decay=gamma)
    trainer = LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(24))
    trainer.train()
    # linear warm-up over 2 steps, then linear decay to 0 at step 6
    schedule = [0.0, 0.5, 1.0, 0.75, 0.5, 0.25]
    assert len(seen) == 6
    for step, groups in enumerate(seen):
        for depth, group_lr, group_lam, applied in groups:
            assert group_lr == pytest.approx(lr * schedule[step] * gamma ** (3 - depth), rel=1e-12)
            if step == 0:
                assert applied is None  # no previous step: the first decay (1, at lr 0) is pre_step()'s
            else:
                assert applied == pytest.approx(1 - group_lr * group_lam, rel=1e-12), (step, depth)
    assert corrections == [0] * 6
    assert {g[0] for g in seen[0]} == {0, 1, 2, 3}
    # four different lrs at once: a look-up in another group's would show
    assert len({g[1] for g in seen[2]}) == 4


def test_mixin_with_an_lpwd_config_records_the_real_base_and_warns_about_lambda(tmp_path: Path,
                                                                                caplog) -> None:
    class MyTrainer(LPWDMixin, Trainer):
        pass

    transformers.logging.enable_propagation()
    try:
        args = TrainingArguments(**common_args(tmp_path, weight_decay=0.5, max_steps=1, optim="adamw_torch"))
        with caplog.at_level("WARNING"):
            trainer = MyTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(8),
                                lpwd_config=LPWDConfig(mode="lpwd", weight_decay=0.1))
        trainer.train()
    finally:
        transformers.logging.disable_propagation()
    assert "lpwd_config.weight_decay=0.1 is the λ used; args.weight_decay=0.5 is ignored" in caplog.text
    assert trainer.lpwd_config.base_optimizer == "adamw_torch"
    assert max(g["weight_decay"] for g in trainer.lpwd_optimizer.param_groups) == pytest.approx(0.1)


def test_layer_table_is_logged_through_transformers_logging(tmp_path: Path, caplog) -> None:
    transformers.logging.enable_propagation()
    transformers.logging.set_verbosity_info()
    try:
        args = LPWDTrainingArguments(**common_args(tmp_path, weight_decay=0.2, max_steps=1),
                                     lpwd_layer_lr_decay=0.5)
        with caplog.at_level("INFO"):
            LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(8)).train()
    finally:
        transformers.logging.set_verbosity_warning()
        transformers.logging.disable_propagation()
    records = list({id(r): r for r in caplog.records if r.name == "transformers.hf_lpwd"}.values())
    assert len(records) == 1  # one record (pytest's capture may list the same record object twice)
    lines = records[0].getMessage().splitlines()
    assert lines[0] == ("LPWD mode=lpwd (timing pwd, layer-wise λ) λ=0.2 layer_lr_decay=0.5 "
                        "base=adamw_torch_fused, 1 steps")  # the settings that differ from their defaults
    assert lines[1].split() == ["depth", "tensors", "parameters", "lr_mult", "λ_mult", "weight_decay",
                                "shrink", "examples"]
    assert [line.split()[:6:3] + line.split()[4:6] for line in lines[2:6]] == [
        ["0", "0.125", "0.2500", "0.05"], ["1", "0.25", "0.5000", "0.1"], ["2", "0.5", "0.7500", "0.15"],
        ["3", "1", "1.0000", "0.2"]]
    # one step at the full lr (linear schedule, no warm-up): S_d = η·γ^(3−d)·λ_d
    assert [float(line.split()[6]) for line in lines[2:6]] == pytest.approx(
        [5e-3 * 0.5 ** (3 - d) * 0.2 * (d + 1) / 4 for d in range(4)], rel=1e-3)


def test_save_model_writes_config_and_card_for_models_and_adapters(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    for name, model in (("full", tiny_llama()),
                        ("adapter", get_peft_model(tiny_llama(),
                                                   LoraConfig(r=2, target_modules=["q_proj"])))):
        args = LPWDTrainingArguments(**common_args(tmp_path / name, weight_decay=0.3, max_steps=1,
                                                   save_strategy="steps", save_steps=1))
        trainer = LPWDTrainer(model=model, args=args, train_dataset=TokenDataset(8, causal_lm=True))
        trainer.train()
        target = tmp_path / name / "final"
        trainer.save_model(str(target))
        for folder in (target, Path(args.output_dir) / "checkpoint-1"):
            assert LPWDConfig.from_pretrained(folder).weight_decay == 0.3
            card = (folder / "README.md").read_text()
            assert card.count("## Weight decay: LPWD") == 1 and "| λ (weight_decay) | 0.3 |" in card
        if name == "adapter":
            assert (target / "adapter_config.json").is_file()
            assert "base_model" in (target / "README.md").read_text()  # PEFT's own card, section appended


def test_saved_config_restores_optim_and_the_new_fields(tmp_path: Path) -> None:
    LPWDConfig(mode="wd", layerwise=True, layer_lr_decay=0.7, tied_depth="output", weight_decay=0.4,
               base_optimizer="sgd").save_pretrained(tmp_path / "cfg")
    args = LPWDTrainingArguments(output_dir=str(tmp_path), use_cpu=True, lpwd_config=str(tmp_path / "cfg"))
    assert str(getattr(args.optim, "value", args.optim)) == "sgd"
    assert (args.weight_decay_mode, args.lpwd_layerwise, args.lpwd_layer_lr_decay, args.lpwd_tied_depth) == (
        "wd", True, 0.7, "output")
    cfg = args.to_lpwd_config()
    assert (cfg.timing, cfg.layerwise, cfg.layer_lr_decay, cfg.tied_depth) == ("wd", True, 0.7, "output")


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"weight_decay_mode": "lpwd", "lpwd_layerwise": False},
         r"--weight_decay_mode='lpwd'.*--lpwd_layerwise=False.*--weight_decay_mode='pwd'"),
        ({"lpwd_layer_lr_decay": 0.0}, r"--lpwd_layer_lr_decay=0 must be in \(0, 1\]"),
        ({"lpwd_layer_lr_decay": 1.2}, r"--lpwd_layer_lr_decay=1.2 must be in \(0, 1\]"),
        ({"lpwd_tied_depth": "middle"}, r"--lpwd_tied_depth='middle'"),
    ],
)
def test_bad_profile_arguments_name_the_flag(tmp_path: Path, overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LPWDTrainingArguments(output_dir=str(tmp_path), use_cpu=True, **overrides)


@pytest.mark.parametrize("mode,layerwise", [("wd", True), ("rwd", True), ("pwd", False), ("wd", False)])
def test_every_timing_profile_combination_builds_its_groups(tmp_path: Path, mode: str,
                                                            layerwise: bool) -> None:
    args = LPWDTrainingArguments(**common_args(tmp_path, weight_decay=0.4, max_steps=1),
                                 weight_decay_mode=mode, lpwd_layerwise=layerwise)
    trainer = LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(8))
    trainer.train()
    lpwd = trainer.lpwd_optimizer
    assert lpwd.mode == mode
    rates = sorted({g["weight_decay"] for g in lpwd.param_groups if g["weight_decay"] > 0})
    assert rates == (pytest.approx([0.1, 0.2, 0.3, 0.4]) if layerwise else [0.4])


def test_optimizer_cls_and_kwargs_become_the_base_and_non_classes_are_refused(tmp_path: Path, caplog) -> None:
    args = LPWDTrainingArguments(**common_args(tmp_path, weight_decay=0.1, max_steps=1))
    trainer = LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(8),
                          optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}))
    trainer.train()
    base = trainer.lpwd_optimizer.base_optimizer
    assert type(base) is torch.optim.SGD and base.defaults["momentum"] == 0.9
    # recorded as the class it is, not as --optim's adamw (a config shared from this run would train AdamW);
    # a run from that config keeps its own --optim and says to pass the class
    trainer.save_model(str(tmp_path / "saved"))
    saved = json.loads((tmp_path / "saved" / "lpwd_config.json").read_text())
    assert saved["base_optimizer"] == "torch.optim.sgd.SGD"
    assert saved["base_optimizer_kwargs"]["momentum"] == 0.9
    transformers.logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            again = LPWDTrainingArguments(output_dir=str(tmp_path), use_cpu=True, optim="adafactor",
                                          lpwd_config=str(tmp_path / "saved"))
    finally:
        transformers.logging.disable_propagation()
    assert str(getattr(again.optim, "value", again.optim)) == "adafactor"
    assert "pass optimizer_cls_and_kwargs=(SGD, {" in caplog.text
    # refused when the Trainer is built, before anything is written
    with pytest.raises(ValueError,
                       match="builds its own parameter groups or optimizers, so LPWD cannot wrap it"):
        LPWDTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(8),
                    optimizer_cls_and_kwargs=(lambda params, **kw: torch.optim.SGD(params, lr=0.1), {}))


def test_schedule_free_optim_is_refused_up_front() -> None:
    from types import SimpleNamespace

    with pytest.raises(ValueError,
                       match=r"--optim schedule_free_adamw: schedule-free optimizers keep two weight"):
        refusals._refuse_schedule_free(SimpleNamespace(optim="schedule_free_adamw"))


@pytest.mark.parametrize(
    "saved,given,expected",
    [
        # a saved lpwd config run with --weight_decay_mode pwd is plain pwd: its layerwise was the mode's
        # default
        (dict(mode="lpwd"), dict(weight_decay_mode="pwd"), ("pwd", False)),
        # a saved wd config with an explicit layer-wise profile stays layer-wise under another timing
        (dict(mode="wd", layerwise=True), dict(weight_decay_mode="rwd"), ("rwd", True)),
        # "lpwd" is the field's default, so here it reads as not given and the file wins (the recipes, which
        # know which flags were given, tell the two apart); no contradiction is raised either way
        (dict(mode="wd"), dict(weight_decay_mode="lpwd"), ("wd", False)),
        (dict(mode="rwd", layerwise=True), dict(), ("rwd", True)),
    ],
)
def test_saved_layerwise_follows_the_mode_unless_it_was_a_choice(tmp_path: Path, saved: dict, given: dict,
                                                                 expected: tuple) -> None:
    LPWDConfig(weight_decay=0.2, **saved).save_pretrained(tmp_path / "cfg")
    args = LPWDTrainingArguments(output_dir=str(tmp_path), use_cpu=True, lpwd_config=str(tmp_path / "cfg"),
                                 **given)
    cfg = args.to_lpwd_config()
    assert (cfg.timing, cfg.layerwise) == expected
    assert LPWDTrainingArguments.saved_config_values(LPWDConfig(mode="lpwd"))["lpwd_layerwise"] is None


@pytest.mark.parametrize(
    "saved,given,expected",
    [
        # λ and τ are one number given two ways: the one given replaces the file's, whichever the file holds
        (dict(weight_decay=0.3), dict(lpwd_decay_timescale=3.0), (0.0, 3.0)),
        (dict(weight_decay=0.0, decay_timescale=2.0), dict(weight_decay=0.05), (0.05, None)),
        (dict(weight_decay=0.0, decay_timescale=2.0), dict(), (0.0, 2.0)),
        (dict(weight_decay=0.3), dict(), (0.3, None)),
    ],
)
def test_a_given_lambda_or_timescale_replaces_the_saved_one(tmp_path: Path, saved: dict, given: dict,
                                                             expected: tuple) -> None:
    LPWDConfig(mode="lpwd", **saved).save_pretrained(tmp_path / "cfg")
    args = LPWDTrainingArguments(output_dir=str(tmp_path), use_cpu=True, lpwd_config=str(tmp_path / "cfg"),
                                 **given)
    assert (args.weight_decay, args.lpwd_decay_timescale) == expected


def test_a_refusal_of_values_taken_from_a_saved_config_says_so(tmp_path: Path) -> None:
    LPWDConfig(mode="wd", weight_decay=0.1, cautious=True).save_pretrained(tmp_path / "cfg")
    message = (r"--lpwd_cautious=true needs the wd timing.* \(from --lpwd_config .*cfg: "
               r"--weight_decay 0.1, --lpwd_cautious True; a flag left at, or given with, its default value")
    with pytest.raises(ValueError, match=message):
        LPWDTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True,
                              lpwd_config=str(tmp_path / "cfg"), weight_decay_mode="pwd", lpwd_cautious=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"learning_rate": 0.5, "weight_decay": 2.0},
         r"--learning_rate=0.5 × --weight_decay=2: the per-step decay d = 1 must stay below 1"),
        ({"optim": "schedule_free_adamw"}, r"schedule-free optimizers keep two weight sequences"),
        ({"deepspeed": {"optimizer": {"type": "AdamW"}, "zero_optimization": {"stage": 2}}},
         r"'optimizer' section"),
    ],
)
def test_check_training_arguments_refuses_from_the_arguments_alone(overrides: dict, match: str) -> None:
    from types import SimpleNamespace

    args = SimpleNamespace(**{"learning_rate": 1e-3, "weight_decay": 0.1, "optim": "adamw_torch_fused",
                              "hf_deepspeed_config": None, "deepspeed": None, **overrides})
    with pytest.raises(ValueError, match=match):
        trainer_module.check_training_arguments(args)
