"""LPWD across processes on CPU (gloo); launched by tests with ``torchrun --nproc_per_node 2``.

    python train_distributed.py {single,ddp,fsdp2,fsdp1} OUT_DIR [--model-dir DIR]

* ``single``: one process, global batch 8 (the reference).
* ``ddp``: LPWDTrainer under torchrun, 2 ranks × batch 4.
* ``fsdp2``: LPWDTrainer on a model sharded at load time by transformers
  (``from_pretrained(..., distributed_config=DistributedConfig(fsdp_size=2))``): DTensor parameters.
* ``plain``: a plain LPWD loop (no Trainer), one process, global batch 8.
* ``fsdp1``: the same plain loop with torch's ``FullyShardedDataParallel(use_orig_params=True)``: names gain
  ``_fsdp_wrapped_module.`` and the flat shards of some parameters are empty on a rank.

Every rank writes the full final parameters to OUT_DIR/rank{R}.pt, and the LPWD groups it built to
OUT_DIR/groups{R}.json ((depth, λ, names) per group); Trainer runs also write OUT_DIR/trainer{R}.json
(pwd's correction passes, the logged per-depth weight norms, and the θ₀ tensors its LPWD holds: local shape,
whether a DTensor, bytes) and checkpoints every 2 steps; the plain loops write OUT_DIR/layout{R}.json (empty
shards, blocks, and θ₀ as built and at the end, in the same form).  ``--targets zero,init`` trains every mode
once per decay target in the same launch (target ``init`` into OUT_DIR/init).
"""

from __future__ import annotations

import argparse
import gc
import json
import os

import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM, set_seed

from hf_lpwd import LPWD, LPWDTrainer, LPWDTrainingArguments, layer_depths, lpwd_param_groups
from tests.tiny import TokenDataset

WEIGHT_DECAY, LR, STEPS, GLOBAL_BATCH = 0.5, 3e-3, 4, 8


def tiny_config() -> LlamaConfig:
    # No dropout (Llama has none): one process and two see the same function of the weights.
    return LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                       tie_word_embeddings=False)


def training_args(out: str, world: int, target: str = "zero") -> LPWDTrainingArguments:
    return LPWDTrainingArguments(
        output_dir=out, weight_decay_mode="lpwd", lpwd_decay_target=target, weight_decay=WEIGHT_DECAY,
        learning_rate=LR,
        max_steps=STEPS, per_device_train_batch_size=GLOBAL_BATCH // world, lr_scheduler_type="linear",
        warmup_steps=1, max_grad_norm=0.0, save_strategy="steps", save_steps=2, save_only_model=True,
        report_to="none", use_cpu=True, disable_tqdm=True, seed=0, data_seed=0, logging_steps=2,
        dataloader_num_workers=0,
    )


def dump(out: str, rank: int, named: dict[str, torch.Tensor], groups: list[dict]) -> None:
    torch.save(named, os.path.join(out, f"rank{rank}.pt"))
    with open(os.path.join(out, f"groups{rank}.json"), "w") as f:
        json.dump([[g["depth"], g["weight_decay"], g["param_names"]] for g in groups], f)


def full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def anchor_layout(anchors: dict[torch.Tensor, torch.Tensor]) -> list[dict]:
    """θ₀ as this rank holds it: per tensor the local shape (a DTensor's shard), whether sharded, bytes."""
    layout = []
    for anchor in anchors.values():
        local = anchor.to_local() if hasattr(anchor, "to_local") else anchor
        layout.append({"shape": list(local.shape), "dtensor": hasattr(anchor, "to_local"),
                       "bytes": local.numel() * local.element_size()})
    return layout


def run_trainer(mode: str, out: str, model_dir: str | None, target: str = "zero") -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    set_seed(0)
    if mode == "fsdp2":
        from transformers import DistributedConfig

        model = LlamaForCausalLM.from_pretrained(
            model_dir, distributed_config=DistributedConfig(fsdp_size=world)
        )
    elif model_dir:
        model = LlamaForCausalLM.from_pretrained(model_dir)
    else:
        model = LlamaForCausalLM(tiny_config())
    trainer = LPWDTrainer(model=model, args=training_args(out, world, target),
                          train_dataset=TokenDataset(64, seed=1, causal_lm=True))
    trainer.train()
    rank = dist.get_rank() if dist.is_initialized() else 0
    if mode == "fsdp2":
        assert all(hasattr(p, "full_tensor") for p in trainer.model.parameters()), \
            "expected DTensor parameters"
    named = {n: full(p) for n, p in trainer.model.named_parameters()}
    dump(out, rank, named, trainer.lpwd_optimizer.param_groups)
    norms = [{k: v for k, v in log.items() if k.startswith("lpwd/")}
             for log in trainer.state.log_history if "loss" in log]
    with open(os.path.join(out, f"trainer{rank}.json"), "w") as f:
        json.dump({"fold_corrections": trainer.lpwd_optimizer.fold_corrections, "norms": norms,
                   "anchors": anchor_layout(trainer.lpwd_optimizer.initial_weights)}, f)
    del trainer
    gc.collect()


def run_plain_loop(out: str, model_dir: str, fsdp1: bool, target: str = "zero") -> None:
    """The same plain LPWD loop, in one process (``plain``) or under FSDP1 on every rank (``fsdp1``)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    rank, world = (dist.get_rank(), dist.get_world_size()) if fsdp1 else (0, 1)
    set_seed(0)
    model = LlamaForCausalLM.from_pretrained(model_dir)
    if fsdp1:
        model = FSDP(model, auto_wrap_policy=ModuleWrapPolicy({LlamaDecoderLayer}), use_orig_params=True,
                     device_id=torch.device("cpu"))
        names = [n for n, _ in model.named_parameters()]
        assert any("_fsdp_wrapped_module." in n for n in names), names[:3]
    empty = sum(p.numel() == 0 for p in model.parameters())
    depths = layer_depths(model)
    groups = lpwd_param_groups(model, WEIGHT_DECAY)
    opt = LPWD(groups, mode="pwd", lr=LR, weight_decay=WEIGHT_DECAY, decay_target=target)
    built = anchor_layout(opt.initial_weights)  # θ₀ as built (FSDP1: copies of its flat local views)
    data = TokenDataset(64, seed=1, causal_lm=True)
    for step in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = LR * min(1.0, step + 1)  # constant after warm-up; exercised per step
        opt.pre_step()
        idx = list(range(step * GLOBAL_BATCH + rank * (GLOBAL_BATCH // world),
                         step * GLOBAL_BATCH + (rank + 1) * (GLOBAL_BATCH // world)))
        batch = {k: torch.stack([data[i][k] for i in idx]) for k in ("input_ids", "attention_mask", "labels")}
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    context = FSDP.summon_full_params(model) if fsdp1 else torch.no_grad()
    with context:
        named = {n.replace("_fsdp_wrapped_module.", ""): p.detach().clone()
                 for n, p in model.named_parameters()}
    dump(out, rank, named, groups)
    with open(os.path.join(out, f"layout{rank}.json"), "w") as f:
        json.dump({"empty_shards": empty, "num_blocks": max(depths.values()) - 1, "anchors_at_build": built,
                   "anchors": anchor_layout(opt.initial_weights)}, f)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["single", "ddp", "fsdp2", "plain", "fsdp1"])
    parser.add_argument("out")
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--targets", default="zero",
                        help="comma-separated decay targets, one run each in this launch "
                        "(zero into OUT_DIR, init into OUT_DIR/init)")
    parser.add_argument("--save-init", action="store_true",
                        help="only write the initial model to --model-dir")
    cli = parser.parse_args()
    if cli.save_init:
        set_seed(0)
        LlamaForCausalLM(tiny_config()).save_pretrained(cli.model_dir)
        return
    os.makedirs(cli.out, exist_ok=True)
    if cli.mode == "fsdp1":
        dist.init_process_group("gloo")
    for target in cli.targets.split(","):
        out = cli.out if target == "zero" else os.path.join(cli.out, target)
        os.makedirs(out, exist_ok=True)
        if cli.mode in ("plain", "fsdp1"):
            run_plain_loop(out, cli.model_dir, cli.mode == "fsdp1", target)
        else:
            run_trainer(cli.mode, out, cli.model_dir, target)
    if dist.is_initialized():  # a rank may abort at exit otherwise (seen with gloo)
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
