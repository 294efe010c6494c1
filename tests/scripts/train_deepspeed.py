"""The Trainer under DeepSpeed ZeRO on CPU (gloo), against DDP; launched with ``torchrun --nproc_per_node 2``.

    python train_deepspeed.py OUT_DIR --model-dir DIR [--engine ddp|zero1|zero2|zero3]
                              [--modes stock,wd,rwd,pwd,lpwd] [--bf16] [--warmup 1] [--probe]
                              [--save-steps N [--save-modes MODES]] [--resume-from ROOT [--resume-step 2]]
                              [--ds-optimizer [--refusal-only]]
    python train_deepspeed.py --save-init --model-dir DIR

Same tiny Llama, data, seeds, lr schedule and global batch (2 ranks × 4) as ``train_distributed.py``.  Several
modes run one after the other in one launch (one import of torch/transformers/deepspeed for all; the runs of
one launch equal separate launches bit for bit), each into ``OUT_DIR/MODE/``.

* ``--engine ddp``: no DeepSpeed (the reference); ``zeroN``: ``TrainingArguments(deepspeed=...)`` with a
  config dict holding ``zero_optimization.stage = N``, ``auto`` batch sizes and *no* ``optimizer`` section, so
  DeepSpeed wraps the Trainer's own optimizer (``zero_force_ds_cpu_optimizer: false`` keeps it from insisting
  on its CPU Adam).
* mode ``stock``: ``transformers.Trainer`` (AdamW, decoupled decay) instead of ``LPWDTrainer``: checks the
  harness itself (ZeRO vs DDP with no LPWD involved); the others are ``LPWDTrainer`` with that
  ``weight_decay_mode``.  A suffix ``-nowarmup`` (``lpwd-nowarmup``) trains with ``warmup_steps=0``: the decay
  before the first forward is then 1 − η₀λ, not 1 (with the default warm-up from lr 0 it is exactly 1).  A
  suffix ``-earlystop`` trains with a constant lr after one warm-up step (``constant_with_warmup``) and stops
  after step 2 of 4 (``control.should_training_stop``, as early stopping does), so pwd has a decay folded in
  for a step that never comes, which the end of ``train()`` must divide out.  A suffix ``-bestmodel`` trains
  with the same lr, evaluates and checkpoints every step, with ``load_best_model_at_end``, the *highest*
  eval_loss as best and an early stop at step 3 (step 1's checkpoint is the best).  A suffix ``-init``
  (``lpwd-init``) decays toward θ₀, the weights the optimizer was built with (``--lpwd_decay_target
  init``).  Suffixes combine
  (``lpwd-init-earlystop``).  A last suffix ``-resume`` (``lpwd-init-resume``) trains its base mode resumed
  from ``OUT_DIR/BASE/checkpoint-STEP``, written by that mode earlier in the same launch (``--save-steps``);
  ``--resume-from ROOT`` instead resumes every mode from ``ROOT/MODE/checkpoint-STEP`` of another launch.
* ``--save-modes``: only these modes checkpoint every ``--save-steps`` steps (default: every mode).
* ``--ds-optimizer``: the DeepSpeed config gets an ``optimizer`` section (which LPWD cannot wrap); with
  ``--refusal-only`` reaching ``deepspeed_init`` is an error, so nothing trains and DeepSpeed's own Adam op is
  not compiled (minutes of g++).
* ``--probe``: records how DeepSpeed drives the client optimizer (``create_optimizer`` calls; at each
  ``step()`` the wrapper's ``param_groups``: how many, which params, shapes, dtypes, keys; ``state_dict`` /
  ``load_state_dict`` calls) in ``MODE/probe{R}.json``.  A custom key ``probe_key`` is put in every group to
  see whether it survives.

Every rank writes the full final parameters (gathered under ZeRO-3) as float32 to ``MODE/rank{R}.pt`` and, in
``MODE/info{R}.json``, the θ₀ tensors its LPWD holds at the end (shape, dtype, bytes; their values, with the
decayed groups' parameter names, in ``MODE/theta0_{R}.pt``); a mode
that raises writes ``MODE/error{R}.txt`` instead and the launch goes on with the next mode.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback

import torch
import torch.distributed as dist
from transformers import (
    EarlyStoppingCallback,
    LlamaForCausalLM,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from hf_lpwd import LPWDTrainer, LPWDTrainingArguments
from tests.scripts.train_distributed import GLOBAL_BATCH, LR, STEPS, WEIGHT_DECAY, tiny_config
from tests.tiny import TokenDataset


def deepspeed_config(stage: int, bf16: bool, ds_optimizer: bool, sub_group_size: int = 0) -> dict:
    config: dict = {
        "zero_optimization": {"stage": stage},
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_force_ds_cpu_optimizer": False,
        "bf16": {"enabled": bf16},
    }
    if stage == 3:
        config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
        if sub_group_size:  # a param group larger than this (per rank) is stepped in several calls
            config["zero_optimization"]["sub_group_size"] = sub_group_size
    if ds_optimizer:
        config["optimizer"] = {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}}
    return config


def training_args(cli: argparse.Namespace, out: str, mode: str, world: int) -> TrainingArguments:
    saves = bool(cli.save_steps) and (not cli.save_modes or mode in cli.save_modes.split(","))
    # "lpwd-nowarmup": lpwd with warmup_steps=0 (the first decay is not 1); "pwd-independent", "wd-cautious",
    # "lpwd-init" (decay toward θ₀): the rules; suffixes combine ("lpwd-init-earlystop")
    mode, *variants = mode.split("-")
    best_model = "bestmodel" in variants
    # a constant lr after one warm-up step from 0: the decay folded in for a step that never comes is not 1
    schedule = "constant_with_warmup" if "earlystop" in variants or best_model else "linear"
    kwargs = dict(
        output_dir=out, weight_decay=WEIGHT_DECAY, learning_rate=LR, max_steps=STEPS,
        per_device_train_batch_size=GLOBAL_BATCH // world, lr_scheduler_type=schedule,
        warmup_steps=0 if "nowarmup" in variants else cli.warmup,
        max_grad_norm=0.0, report_to="none", use_cpu=True, ddp_backend="gloo", disable_tqdm=True, seed=0,
        data_seed=0, logging_steps=2, dataloader_num_workers=0, bf16=cli.bf16,
        save_strategy="steps" if saves else "no", save_steps=cli.save_steps or 500,
        save_only_model=False,
    )
    if best_model:  # evaluate and save every step; the highest eval_loss (step 1's: the losses fall) is best
        kwargs.update(eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1,
                      load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=True,
                      per_device_eval_batch_size=GLOBAL_BATCH // world)
    if "nowarmup" in variants:
        # Without a warm-up Adam's first update is lr·g/(|g|+eps) at the full lr: an element whose gradient is
        # below eps (1e-8) turns ZeRO-3's ulp-level gradient differences into update differences of ~lr (seen:
        # 4.5e-4 on one element, then 1.8e-3 everywhere). eps = 1e-3 keeps the comparison well conditioned
        # (ZeRO-3 vs DDP then ≤ 8e-9) while the timings still differ by 7e-3.
        kwargs["adam_epsilon"] = 1e-3
    if cli.engine.startswith("zero"):
        kwargs["deepspeed"] = deepspeed_config(int(cli.engine[-1]), cli.bf16, cli.ds_optimizer,
                                               cli.sub_group_size)
    if mode == "stock":
        return TrainingArguments(**kwargs)
    rules = {}
    if "independent" in variants:  # d = (η_t/η̄)·λ: λ is the per-step decay at the peak lr
        rules = {"lpwd_lr_coupling": "independent"}
        kwargs["weight_decay"] = 2 * WEIGHT_DECAY * LR  # twice coupled pwd's per-step decay: a run of its own
    elif "cautious" in variants:
        rules = {"lpwd_cautious": True}
    if "init" in variants:  # decay toward θ₀, the weights the optimizer was built with
        rules["lpwd_decay_target"] = "init"
    return LPWDTrainingArguments(weight_decay_mode=mode, **rules, **kwargs)


class StopAfter(TrainerCallback):
    """Stop training after ``step`` optimizer steps, through the flag early stopping sets."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


EARLY_STOP_STEP = 2


def describe_tensor(t: torch.Tensor) -> dict:
    return {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
            "has_grad": t.grad is not None}


class Probe:
    """Records how the client optimizer is driven (``--probe``)."""

    def __init__(self) -> None:
        self.create_optimizer_calls: list[dict] = []
        self.steps: list[dict] = []
        self.state_dict_calls = 0
        self.load_state_dict_calls = 0
        self.loaded_group_keys: list[list[str]] = []
        self.original_groups: list[dict] = []
        self.original_list: list[dict] | None = None

    def attach(self, opt: torch.optim.Optimizer) -> None:
        self.original_list, self.original_groups = opt.param_groups, list(opt.param_groups)
        for index, group in enumerate(opt.param_groups):
            group["probe_key"] = index
        base = getattr(opt, "base_optimizer", None)

        def pre_hook(o: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
            if len(self.steps) >= 40:
                return
            self.steps.append({
                "param_groups_is_original_list": o.param_groups is self.original_list,
                "base_groups_are_wrapper_groups": base is None or base.param_groups is o.param_groups,
                "base_param_groups_len": len(base.param_groups) if base is not None else None,
                "groups": [{
                    "index_in_original": next((i for i, g in enumerate(self.original_groups) if g is group),
                                              None),
                    "keys": sorted(k for k in group if k != "params"),
                    "probe_key": group.get("probe_key"),
                    "lr": float(group["lr"]),
                    "params": [describe_tensor(p) for p in group["params"]],
                } for group in o.param_groups],
            })

        opt.register_step_pre_hook(pre_hook)
        state_dict, load_state_dict = opt.state_dict, opt.load_state_dict

        def counted_state_dict(*args, **kwargs):
            self.state_dict_calls += 1
            return state_dict(*args, **kwargs)

        def counted_load_state_dict(sd, *args, **kwargs):
            self.load_state_dict_calls += 1
            self.loaded_group_keys = [sorted(k for k in g if k != "params") for g in sd["param_groups"]]
            return load_state_dict(sd, *args, **kwargs)

        opt.state_dict, opt.load_state_dict = counted_state_dict, counted_load_state_dict

    def dump(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump({k: v for k, v in vars(self).items() if not k.startswith("original")}, f, indent=1)


def make_trainer_class(base: type[Trainer], probe: Probe | None) -> type[Trainer]:
    class ProbedTrainer(base):  # type: ignore[misc,valid-type]
        anchor_bytes_at_build = 0  # θ₀ bytes LPWD holds when create_optimizer returns (before ZeRO's masters)

        def create_optimizer(self, *args, **kwargs):
            before = self.optimizer
            opt = super().create_optimizer(*args, **kwargs)
            lpwd = getattr(self, "lpwd_optimizer", None)
            if before is None and lpwd is not None:
                self.anchor_bytes_at_build = sum(
                    a.numel() * a.element_size() for a in lpwd.initial_weights.values()
                )
            if probe is None:
                return opt
            probe.create_optimizer_calls.append({"optimizer_was_set": before is not None,
                                                  "type": type(opt).__name__,
                                                  "groups": len(getattr(opt, "param_groups", []))})
            if before is None and hasattr(opt, "param_groups"):
                probe.attach(opt)
            return opt

    return ProbedTrainer


def final_parameters(trainer: Trainer, stage3: bool) -> dict[str, torch.Tensor]:
    model = trainer.model
    params = list(model.parameters())
    if stage3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return {n: p.detach().float().clone() for n, p in model.named_parameters()}
    return {n: p.detach().float().clone() for n, p in model.named_parameters()}


def anchor_layout(trainer: Trainer) -> list[dict]:
    """θ₀ as this rank's LPWD holds it (target ``init``): one entry per tensor, shape, dtype and bytes."""
    lpwd = getattr(trainer, "lpwd_optimizer", None)
    anchors = lpwd.initial_weights.values() if lpwd is not None else ()
    return [{"shape": list(a.shape), "dtype": str(a.dtype).removeprefix("torch."),
             "bytes": a.numel() * a.element_size()} for a in anchors]


def train_one(cli: argparse.Namespace, mode: str, out: str, world: int) -> None:
    """One training run of ``mode`` (``stock`` or a weight_decay_mode) writing ``out/rank{R}.pt``."""
    os.makedirs(out, exist_ok=True)
    trainer_kind = "stock" if mode.startswith("stock") else "lpwd"
    args = training_args(cli, out, mode, world)  # before the model: under ZeRO-3 it enables zero.Init
    set_seed(0)
    model = LlamaForCausalLM.from_pretrained(cli.model_dir, dtype=torch.float32)
    probe = Probe() if cli.probe else None
    cls = make_trainer_class(LPWDTrainer if trainer_kind == "lpwd" else Trainer, probe)
    rank = dist.get_rank() if dist.is_initialized() else 0
    start = time.perf_counter()
    try:
        callbacks, eval_data = None, None
        if mode.endswith("-earlystop"):
            callbacks = [StopAfter(EARLY_STOP_STEP)]
        elif mode.endswith("-bestmodel"):  # stops after step 3: no eval_loss beats step 1's by 1e9
            callbacks = [EarlyStoppingCallback(early_stopping_patience=2, early_stopping_threshold=1e9)]
            eval_data = TokenDataset(8, seed=2, causal_lm=True)
        trainer = cls(model=model, args=args, train_dataset=TokenDataset(64, seed=1, causal_lm=True),
                      eval_dataset=eval_data, callbacks=callbacks)
        if mode.endswith("-resume"):  # the base mode's checkpoint, written earlier in this launch
            resume = os.path.join(cli.out, mode.removesuffix("-resume"), f"checkpoint-{cli.resume_step}")
        elif cli.resume_from:
            resume = os.path.join(cli.resume_from, mode, f"checkpoint-{cli.resume_step}")
        else:
            resume = None
        trainer.train(resume_from_checkpoint=resume)
    finally:
        if probe is not None:
            probe.dump(os.path.join(out, f"probe{rank}.json"))
    train_seconds = time.perf_counter() - start
    named = final_parameters(trainer, cli.engine == "zero3")
    torch.save(named, os.path.join(out, f"rank{rank}.pt"))
    lpwd = getattr(trainer, "lpwd_optimizer", None)
    if lpwd is not None and lpwd.initial_weights:  # θ₀ as held at the end, with the decayed groups' names
        names = [g["param_names"] for g in lpwd.param_groups if g["weight_decay"]]
        torch.save({"names": names, "theta0": [a.clone() for a in lpwd.initial_weights.values()],
                    "pre_step_pending": lpwd.pre_step_pending, "pending_decay": lpwd.pending_decay,
                    "applied": [g.get("lpwd_applied_decay") for g in lpwd.param_groups]},
                   os.path.join(out, f"theta0_{rank}.pt"))
    with open(os.path.join(out, f"info{rank}.json"), "w") as f:
        json.dump({"train_seconds": train_seconds, "global_step": trainer.state.global_step,
                   "best_model_checkpoint": trainer.state.best_model_checkpoint,
                   "anchors": anchor_layout(trainer),
                   "anchor_bytes_at_build": getattr(trainer, "anchor_bytes_at_build", 0)}, f)
    if getattr(trainer, "deepspeed", None) is not None:
        trainer.deepspeed.destroy()
    del trainer, model
    gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", nargs="?")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--save-init", action="store_true",
                        help="only write the initial model to --model-dir")
    parser.add_argument("--engine", default="ddp", choices=["ddp", "zero1", "zero2", "zero3"])
    parser.add_argument("--modes", default="lpwd",
                        help="comma-separated: stock, wd, rwd, pwd, lpwd, each optionally with -nowarmup "
                        "or -earlystop")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--probe", action="store_true")
    parser.add_argument("--save-steps", type=int, default=0)
    parser.add_argument("--save-modes", default="",
                        help="comma-separated: the modes that checkpoint every --save-steps (default all)")
    parser.add_argument("--resume-from", default=None, help="resume each mode from ROOT/MODE/checkpoint-STEP")
    parser.add_argument("--resume-step", type=int, default=2)
    parser.add_argument("--refusal-only", action="store_true",
                        help="stop with an error where DeepSpeed would be initialised "
                        "(nothing trains or compiles)")
    parser.add_argument("--ds-optimizer", action="store_true")
    parser.add_argument("--sub-group-size", type=int, default=0,
                        help="ZeRO-3 sub_group_size (default DeepSpeed's 1e9)")
    parser.add_argument("--skip-deepspeed-check", action="store_true",
                        help="probe only: bypass hf_lpwd's refusal of pwd under DeepSpeed, "
                        "to see what happens")
    cli = parser.parse_args()
    if cli.save_init:
        set_seed(0)
        LlamaForCausalLM(tiny_config()).save_pretrained(cli.model_dir)
        return
    modes = cli.modes.split(",")
    suffixes = {"nowarmup", "earlystop", "bestmodel", "independent", "cautious", "init", "resume"}
    unknown = {m for m in modes if m.split("-")[0] not in ("stock", "wd", "rwd", "pwd", "lpwd")
               or not set(m.split("-")[1:]) <= suffixes
               or (m.endswith("-resume") and m.removesuffix("-resume") not in modes[:modes.index(m)])}
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}")
    if cli.refusal_only:
        import transformers.trainer

        def not_refused(*args, **kwargs):
            raise RuntimeError("NOT REFUSED: training reached deepspeed_init")

        transformers.trainer.deepspeed_init = not_refused
    if cli.skip_deepspeed_check:
        import hf_lpwd.trainer

        hf_lpwd.trainer.check_deepspeed = lambda *args, **kwargs: None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # Initialise torch's process group (TrainingArguments.device) and, under DeepSpeed, deepspeed.comm:
    # zero.Init (ZeRO-3 from_pretrained) reads the world size from deepspeed.comm, which accelerate leaves
    # uninitialised on CPU; it would see 1 rank and reject the batch sizes.
    _ = training_args(cli, cli.out, "wd", world).device
    if cli.engine.startswith("zero"):
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    for mode in modes:
        out = os.path.join(cli.out, mode)
        try:
            train_one(cli, mode, out, world)
        except Exception as exc:  # noqa: BLE001 - recorded for the test, which decides (xfail or fail)
            # Raised before any collective on both ranks alike (e.g. a refusal in __init__), or the run hangs
            # and the test's timeout ends it.
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, f"error{rank}.txt"), "w") as f:
                f.write(f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}")
            print(f"[rank{rank}] {mode} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    if dist.is_initialized():  # a rank may abort at exit otherwise (seen with gloo)
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
