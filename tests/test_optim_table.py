"""Every ``--optim`` of transformers with LPWDTrainer: wrapped (``wd`` mode against the stock Trainer),
refused, or
not buildable on CPU.  The README's "--optim values" table is this test's ``EXPECTED``.

Each available optimizer trains a tiny Llama for 3 steps at λ = 10, η = 1e-3 (constant) with the stock Trainer
and
with ``LPWDTrainer(weight_decay_mode="wd")``, and gets a class from what comes out:

* ``bitwise``: every final weight equal (``torch.equal``);
* ``l2``: a parameter whose gradient is exactly 0 shrinks by LPWD's decoupled (1 − ηλ)^3 but by something else
in
  the stock Trainer, which adds λθ to the gradient inside the step (L2);
* ``rounding``: decoupled in both, every tensor within 1e-5 of the stock one (the base's own decay is another
  float operation than LPWD's θ·(1 − ηλ));
* ``other_lr``: decoupled in both at zero gradient, and further apart than rounding (StableAdamW).

``EXPECTED`` is written by hand from each library's documented behaviour (its docstring or source, cited per
row),
not from this code: a new transformers release with a new ``--optim`` fails
``test_the_table_covers_every_optim``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import Trainer, TrainingArguments, set_seed
from transformers.training_args import OptimizerNames

from hf_lpwd import LPWD, LPWDTrainer, LPWDTrainingArguments
from hf_lpwd.trainer import check_training_arguments
from tests.tiny import TokenDataset, tiny_llama

ROOT = Path(__file__).parent.parent
LR, LAM, STEPS = 1e-3, 10.0, 3
VOCAB = 256  # embeddings of 4096 elements: bitsandbytes' min_8bit_size, so 8-bit state is in play

BITWISE, L2, ROUNDING, OTHER_LR = "bitwise", "l2", "rounding", "other_lr"
REFUSED, NOT_ON_CPU, NOT_INSTALLABLE = "refused", "not_on_cpu", "not_installable"
DECOUPLE_LR = "decouple_lr=True,max_lr=1e-3"

_BNB_DECOUPLED = (
    "adamw_bnb_8bit",
    "adamw_8bit",
    "paged_adamw_32bit",
    "paged_adamw_8bit",
    "ademamix",
    "ademamix_8bit",
    "paged_ademamix_32bit",
    "paged_ademamix_8bit",
    "lion_8bit",
    "lion_32bit",
    "paged_lion_32bit",
    "paged_lion_8bit",
)
EXPECTED: dict[tuple[str, str | None], str] = {
    # torch.optim.AdamW: decoupled θ·(1 − ηλ) before the update; LPWD's wd on it *is* torch's AdamW.
    ("adamw_torch", None): BITWISE,
    ("adamw_torch_fused", None): BITWISE,
    # transformers' Adafactor: θ += −λη·θ, then the update (decoupled; another float op than θ·(1 − ηλ)).
    ("adafactor", None): ROUNDING,
    # torch.optim.SGD: weight_decay adds λθ to the gradient (L2). At momentum 0, θ − η(g + λθ) = (1 − ηλ)θ −
    # ηg is
    # the same step as decoupled SGDW; with momentum the buffer carries λθ and they part.
    ("sgd", None): ROUNDING,
    ("sgd", "momentum=0.9"): L2,
    # torch.optim.Adagrad / RMSprop: λθ added to the gradient, then normalised by the adaptive denominator
    # (L2).
    ("adagrad", None): L2,
    ("rmsprop", None): L2,
    # bitsandbytes RMSprop (all three names): L2 in the kernel, like torch's.
    ("rmsprop_bnb", None): L2,
    ("rmsprop_bnb_8bit", None): L2,
    ("rmsprop_bnb_32bit", None): L2,
    # bitsandbytes AdamW / AdEMAMix / Lion, 8- and 32-bit, paged or not: decoupled θ·(1 − ηλ) before the
    # update;
    # the 8-bit ones keep 32-bit state for nn.Embedding (the stock create_optimizer's override, also LPWD's).
    **{(name, None): BITWISE for name in _BNB_DECOUPLED},
    # GrokAdamW: decoupled decay; its momentum depends on a parameter's position in its group (β1·(1 − γ)^i),
    # so
    # it is bitwise only with the Trainer's two groups (wd, rwd, pwd, uniform λ): see the layer-wise test
    # below.
    ("grokadamw", None): BITWISE,
    # optimi.StableAdamW: decoupled, but at its update-clipped lr η/max(1, RMS(g²/v)) per tensor; LPWD decays
    # at η.
    ("stable_adamw", None): OTHER_LR,
    # ... and decouple_lr=True decays by (1 − (η/max_lr)·λ), a rule LPWD's decay would silently replace.
    ("stable_adamw", DECOUPLE_LR): REFUSED,
    # torchao AdamW8bit / AdamW4bit: decoupled inside its compiled step.
    ("adamw_torch_8bit", None): ROUNDING,
    ("adamw_torch_4bit", None): ROUNDING,
    # Their own parameter groups (low-rank projections of --optim_target_modules) and, *_layerwise, steps
    # inside
    # backward hooks (GaLore, APOLLO); the update fused into backward, no step() (LOMO, AdaLomo); two weight
    # sequences switched by train()/eval() (schedule-free).
    **{
        (o.value, None): REFUSED
        for o in OptimizerNames
        if o.value.startswith(("galore_", "apollo_", "schedule_free_")) or o.value in ("lomo", "adalomo")
    },
    # Hardware of their own: TPU (torch_xla), Ascend NPU (torch_npu).
    ("adamw_torch_xla", None): NOT_ON_CPU,
    ("adamw_torch_npu_fused", None): NOT_ON_CPU,
    # torchdistx: built from source only, no PyPI release for current torch.
    ("adamw_anyprecision", None): NOT_INSTALLABLE,
}

PACKAGE = {
    **{
        name: "bitsandbytes"
        for name in (*_BNB_DECOUPLED, "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit")
    },
    "grokadamw": "grokadamw",
    "stable_adamw": "optimi",
    "adamw_torch_8bit": "torchao",
    "adamw_torch_4bit": "torchao",
}
WHY_NOT_INSTALLED = {  # measured here: ~40 s cold (torch.compile), ~8 s with a warm inductor cache
    "torchao": "torchao is not in the dev extra: its optimizers compile their step with torch.compile "
    "(~40 s cold for these two runs on a 2-core CPU)",
}


class WithZeroGradProbe(nn.Module):
    """A tiny Llama plus one decayed matrix whose gradient is exactly 0 (it enters the loss times 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_llama(vocab=VOCAB)
        self.zero_grad_probe = nn.Parameter(torch.ones(64, 64))

    def forward(self, input_ids, attention_mask=None, labels=None):
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        out.loss = out.loss + 0.0 * self.zero_grad_probe.sum()
        return out


def arguments(
    kind: str, tmp_path: Path, optim: str, optim_args: str | None, **overrides
) -> TrainingArguments:
    kwargs = dict(
        output_dir=str(tmp_path / kind),
        optim=optim,
        optim_args=optim_args,
        max_steps=STEPS,
        per_device_train_batch_size=4,
        learning_rate=LR,
        weight_decay=LAM,
        lr_scheduler_type="constant",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        dataloader_num_workers=0,
        seed=0,
        optim_target_modules="all-linear",
    )
    mode = overrides.pop("weight_decay_mode", "wd")
    kwargs.update(overrides)
    if kind == "stock":
        return TrainingArguments(**kwargs)
    return LPWDTrainingArguments(**kwargs, weight_decay_mode=mode)


def train(kind: str, args: TrainingArguments, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    if importlib.util.find_spec("bitsandbytes") is not None:
        import bitsandbytes

        # bitsandbytes' overrides are process-global and keyed by (group, index) too: start each run afresh.
        bitsandbytes.optim.GlobalOptimManager.get_instance().initialize()
    set_seed(0)
    model = WithZeroGradProbe() if model is None else model
    trainer_cls = Trainer if kind == "stock" else LPWDTrainer
    trainer_cls(model=model, args=args, train_dataset=TokenDataset(12, vocab=VOCAB, causal_lm=True)).train()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def classify(tmp_path: Path, optim: str, optim_args: str | None) -> str:
    try:
        check_training_arguments(arguments("lpwd", tmp_path, optim, optim_args))
    except ValueError:
        return REFUSED
    stock = train("stock", arguments("stock", tmp_path, optim, optim_args))
    ours = train("lpwd", arguments("lpwd", tmp_path, optim, optim_args))
    if all(torch.equal(stock[n], ours[n]) for n in stock):
        return BITWISE
    decoupled = (1.0 - LR * LAM) ** STEPS
    # LPWD's wd is decoupled on every base it wraps: a zero gradient leaves exactly the decay.
    assert ours["zero_grad_probe"].double().mean().item() == pytest.approx(decoupled, rel=1e-6)
    if abs(stock["zero_grad_probe"].double().mean().item() / decoupled - 1.0) > 1e-4:
        return L2
    if all((stock[n] - ours[n]).norm() <= 1e-5 * stock[n].norm() for n in stock):
        return ROUNDING
    return OTHER_LR


def test_the_table_covers_every_optim() -> None:
    assert {name for name, _ in EXPECTED} == {o.value for o in OptimizerNames}


TRAINED = [key for key, cls in EXPECTED.items() if cls not in (NOT_ON_CPU, NOT_INSTALLABLE)]


@pytest.mark.parametrize("optim,optim_args", TRAINED, ids=[f"{o}[{a}]" if a else o for o, a in TRAINED])
def test_each_optim_is_classified_as_documented(tmp_path: Path, optim: str, optim_args: str | None) -> None:
    package = PACKAGE.get(optim)
    if package is not None and importlib.util.find_spec(package) is None:
        pytest.skip(WHY_NOT_INSTALLED.get(package, f"{package} is not installed (pip install -e '.[dev]')"))
    assert classify(tmp_path, optim, optim_args) == EXPECTED[(optim, optim_args)]


@pytest.mark.parametrize(
    "optim", [name for (name, _), cls in EXPECTED.items() if cls in (NOT_ON_CPU, NOT_INSTALLABLE)]
)
def test_the_optims_not_on_cpu_cannot_be_built_here(optim: str) -> None:
    """Not a silent skip: the stock Trainer itself cannot build them here (the package is missing)."""
    with pytest.raises((ImportError, ValueError), match=r"torch_xla|torch_npu|torchdistx"):
        Trainer.get_optimizer_cls_and_kwargs(
            TrainingArguments(output_dir="unused", optim=optim, use_cpu=True)
        )


def test_layerwise_groups_change_grokadamw_itself(tmp_path: Path) -> None:
    """At λ = 0 lpwd's layer-wise groups change nothing for AdamW, but GrokAdamW's momentum β1·(1 − γ)^i
    depends on
    a parameter's index i in its group, so the same parameters in other groups train differently."""
    if importlib.util.find_spec("grokadamw") is None:
        pytest.skip("grokadamw is not installed (pip install -e '.[dev]')")
    for optim, same in (("adamw_torch", True), ("grokadamw", False)):
        stock = train(
            "stock", arguments("stock", tmp_path, optim, None, weight_decay=0.0), tiny_llama(vocab=VOCAB)
        )
        ours = train(
            "lpwd",
            arguments("lpwd", tmp_path, optim, None, weight_decay=0.0, weight_decay_mode="lpwd"),
            tiny_llama(vocab=VOCAB),
        )
        assert all(torch.equal(stock[n], ours[n]) for n in stock) is same, optim


# --------------------------------------------------------------------------- refusals, before anything is
# written
REFUSALS = [
    (o, None, rf"--optim {o}: (GaLore|APOLLO|LOMO / AdaLomo|schedule-free)")
    for (o, a), cls in EXPECTED.items()
    if cls == REFUSED and a is None
]
REFUSALS.append(
    (
        "stable_adamw",
        DECOUPLE_LR,
        r"--optim stable_adamw --optim_args decouple_lr=True: .*LPWD replaces "
        r"StableAdamW's own decay.*--lpwd_lr_coupling independent",
    )
)


@pytest.mark.parametrize(
    "optim,optim_args,match", REFUSALS, ids=[r[0] + ("[decouple_lr]" if r[1] else "") for r in REFUSALS]
)
def test_refused_from_the_arguments_alone(
    tmp_path: Path, optim: str, optim_args: str | None, match: str
) -> None:
    args = arguments("lpwd", tmp_path, optim, optim_args)
    with pytest.raises(ValueError, match=match):
        check_training_arguments(args)
    assert not Path(args.output_dir).exists()


@pytest.mark.parametrize("optim_args", ["decouple_lr=False", "decouple_lr=1,max_lr=1e-3"])
def test_any_decouple_lr_value_the_trainer_reads_as_true_is_refused(tmp_path: Path, optim_args: str) -> None:
    """transformers passes bool(value) to StableAdamW: "False" is a non-empty string, so it turns decouple_lr
    on."""
    with pytest.raises(ValueError, match="decouple_lr"):
        check_training_arguments(arguments("lpwd", tmp_path, "stable_adamw", optim_args))


def test_stable_adamw_without_decouple_lr_is_accepted(tmp_path: Path) -> None:
    """Accepted, and built as LPWD over optimi's StableAdamW with decouple_lr off and max_lr passed."""
    if importlib.util.find_spec("optimi") is None:
        pytest.skip("optimi is not installed (pip install -e '.[dev]')")
    args = arguments("lpwd", tmp_path, "stable_adamw", "max_lr=1e-3")
    check_training_arguments(args)
    trainer = LPWDTrainer(
        model=tiny_llama(vocab=VOCAB), args=args, train_dataset=TokenDataset(4, vocab=VOCAB, causal_lm=True)
    )
    optimizer = trainer.create_optimizer()
    base = optimizer.base_optimizer
    assert isinstance(optimizer, LPWD) and type(base).__name__ == "StableAdamW"
    assert base.defaults["decouple_lr"] is False and base.defaults["max_lr"] == 1e-3
    # LPWD's λ on the decayed group, 0 on the Trainer's no-decay group (norms, biases)
    assert {group["weight_decay"] for group in optimizer.param_groups if group["params"]} == {LAM, 0.0}


@pytest.mark.slow
@pytest.mark.parametrize(
    "optim,extra",
    [
        ("galore_adamw", ["--optim_target_modules", "all-linear"]),
        ("stable_adamw", ["--optim_args", "decouple_lr=True"]),
    ],
)
def test_a_recipe_refuses_before_creating_the_output_folder(tmp_path: Path, optim: str, extra: list) -> None:
    """A real recipe process: exit status 2, one ``error:`` line naming --optim, no output folder."""
    out = tmp_path / "out"
    text = tmp_path / "t.txt"
    text.write_text("".join(f"To be, or not to be: line {i}.\n" for i in range(40)))
    cmd = [
        sys.executable,
        str(ROOT / "recipes" / "causal_lm.py"),
        "--model_type",
        "llama",
        "--config_overrides",
        "vocab_size=257,hidden_size=16,intermediate_size=32,num_hidden_layers=2,num_attention_heads=2,"
        "num_key_value_heads=2,max_position_embeddings=64",
        "--tokenizer_name",
        str(ROOT / "recipes" / "data" / "byte_tokenizer"),
        "--train_file",
        str(text),
        "--block_size",
        "16",
        "--output_dir",
        str(out),
        "--max_steps",
        "1",
        "--use_cpu",
        "true",
        "--report_to",
        "none",
        "--weight_decay",
        "0.1",
        "--optim",
        optim,
        *extra,
    ]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-4000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("causal_lm.py: error:")]
    assert len(errors) == 1 and f"--optim {optim}" in errors[0], proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    assert not out.exists()
