"""LPWDTrainer under DeepSpeed ZeRO-1, ZeRO-2 and ZeRO-3: real 2-process runs on CPU (torchrun, gloo), against
DDP.

DeepSpeed wraps the Trainer's own optimizer (no ``optimizer`` section in its config) and steps it on flat fp32
master partitions; the final parameters of every mode must equal the 2-rank DDP run of the same mode.

Tolerance.  In fp32 (deepspeed 0.19.8, torch 2.13 CPU, 4 steps, lr 3e-3, λ 0.5) ZeRO-1 and ZeRO-2 equal DDP
*bit for bit* in every mode (stock Trainer, wd, rwd, pwd, lpwd, with and without warm-up): asserted with
``torch.equal``.  ZeRO-3 differs by at most 1.2e-7 absolute (the all-gather / reduce-scatter sums in another
order; elements of ~1e-4 show 3e-4 relative, i.e. a few ulps).  There we assert rtol=1e-5, atol=1e-6 (as
test_distributed.py): 8× the worst ZeRO-3 difference, far below the effect of one decay step
(η·λ·|θ| ≈ 1.5e-3 × 0.02 = 3e-5), so a lost, doubled or mistimed decay on any rank would fail.
In bf16 DeepSpeed runs the whole model in bf16 (fp32 master in the optimizer) while DDP autocasts with fp32
weights, so the two are not comparable element-wise; there ZeRO-3 must equal ZeRO-2 bit for bit (asserted).

Decay toward θ₀ (``--lpwd_decay_target init``, modes ``wd-init`` and ``lpwd-init`` in the same launches):
the groups hold DeepSpeed's flat fp32 partitions when they step (ZeRO-1/2 one group per ``step()`` call,
ZeRO-3 one flat sub-group), so θ₀ is taken from each partition the first time it is stepped, and each rank
keeps the θ₀ of its own partitions only: half the decayed weights here, 4 bytes each.  Equal to DDP as the
other modes are (ZeRO-1/2 bitwise, ZeRO-3 within the tolerance above).  The step-2 checkpoints of ZeRO-2 and
ZeRO-3, fp32 and bf16, hold θ₀ of each rank's partition (ZeRO-1/2: the rank's half of the flattened group;
ZeRO-3: the rank's half of each parameter, concatenated) bit for bit.  In bf16 θ₀ comes from DeepSpeed's
fp32 masters, which are built from the bf16 model: θ₀ is the bf16 initial weights upcast (the fp32
pretrained weights rounded to bf16), not the fp32 pretrained weights (asserted); ZeRO-3 equals ZeRO-2 bit
for bit toward θ₀ as toward 0, and differs from toward 0 (in 3.6k elements, by up to 4.9e-4).
Resume: ZeRO-2 from its step-2 checkpoint (another launch) and ZeRO-3 (modes ``lpwd-resume``,
``lpwd-init-resume``, resumed in the same launch from ``lpwd`` / ``lpwd-init``'s step-2 checkpoint) equal the
uninterrupted run *bit for bit*: both sides run the same engine, so ZeRO-3's reduction order is the same on
both and no tolerance is needed.  θ₀ taken from the resumed partitions instead of the checkpoint's (tried by
disabling its restore) makes ZeRO-3 differ by 1.5e-6.  Early stop toward θ₀ (``lpwd-init-earlystop``):
ZeRO-2 bitwise DDP and ZeRO-3 within its tolerance, as toward 0.  ``load_best_model_at_end`` (``-bestmodel``)
under DDP, ZeRO-2 and ZeRO-3: the best checkpoint's weights, bitwise, and θ₀ the initial weights, one copy.

Also checked: an early stop under ZeRO-2 (bitwise DDP's settled weights) and ZeRO-3 (since 0.6.1; bf16:
ZeRO-3 bitwise ZeRO-2), warmup_steps=0 (the decay before the
first forward is 1 − η₀λ, not 1), ZeRO-3 with a small
``sub_group_size`` (one param group stepped in several calls), bf16, resume from a ZeRO-2 checkpoint
(bitwise), and the refusal of a DeepSpeed ``optimizer`` section.

Cost (2 shared CPU cores): each launch imports torch/transformers/deepspeed once and trains its modes in turn
(1-9 s of training per mode): ddp 32-65 s, zero1 and zero2 35-60 s each, zero3 54-64 s, zero2_bf16 34-44 s,
zero3_bf16 42-46 s, zero3_sub ~35 s, zero2_resume 36-43 s, ds_optimizer (1 process, nothing trains) 20-33 s;
about 6 min in all (3.1-3.6 min in the runs of December 2026).  The θ₀ additions are modes in existing
launches, no launch of their own; measured per mode (wall, from one mode's output to the next, two runs): ddp
and zero2 ``lpwd-init-earlystop`` 0.6-1.0 s and 0.8 s; zero3 ``lpwd-resume`` and ``lpwd-init-resume``
1.2-1.5 s each (plus the step-2/step-4 checkpoints of ``lpwd`` and ``lpwd-init``, ≤ 0.5 s); zero2_bf16
``wd-init`` + ``lpwd-init`` 1.3-1.7 s, zero3_bf16 3.8-4.5 s: 10-12 s in all, within the launches' run-to-run
noise.  The very first DeepSpeed
launch on a machine also compiles DeepSpeed's shm comm op with g++ (~80 s, cached in
~/.cache/torch_extensions).  A config with an ``optimizer`` section that is *not* refused makes DeepSpeed
compile its CPU Adam op (~5 min): the refusal test stops such a run at ``deepspeed_init`` instead.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import deepspeed  # noqa: F401 - the deepspeed extra, installed by `make test`: a broken install fails here, loudly
import pytest
import torch
from safetensors.torch import load_file

from tests.tiny import ROOT, offline_env

SCRIPT = str(ROOT / "tests" / "scripts" / "train_deepspeed.py")
MODES = ("wd", "rwd", "pwd", "lpwd")
RULES = ("pwd-independent", "wd-cautious")  # the lr coupling and cautious decay of the decay-rules issue
NO_WARMUP = ("pwd-nowarmup", "lpwd-nowarmup")
INIT = ("wd-init", "lpwd-init")  # decay toward θ₀ (--lpwd_decay_target init), the wd and pwd timings
ALL = ("stock", *MODES, *NO_WARMUP, *RULES, *INIT)
# constant lr after one warm-up step, stopped after step 2 of 4: a decay folded in for a step that never
# comes (toward 0 and θ₀)
EARLY_STOP = ("lpwd-earlystop", "lpwd-init-earlystop")
# the same lr, evaluated and saved every step, load_best_model_at_end with step 1's checkpoint the best
BEST_MODEL = ("lpwd-bestmodel", "lpwd-init-bestmodel")
# ZeRO-3 runs resumed in the same launch from the step-2 checkpoint of the mode without the suffix
ZERO3_RESUMED = ("lpwd-resume", "lpwd-init-resume")
RTOL, ATOL = 1e-5, 1e-6
pytestmark = pytest.mark.slow


def launch(out: Path, *args: str, world: int = 2) -> float:
    env = offline_env()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world),
           SCRIPT, str(out), *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, timeout=900, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return time.perf_counter() - start


class Runs:
    """Launches on demand, once per (engine, options), shared by the tests of this module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.init = root / "init"
        subprocess.run([sys.executable, SCRIPT, "--save-init", "--model-dir", str(self.init)], check=True,
                       env=offline_env(), timeout=300)
        self.done: dict[str, Path] = {}

    def get(self, name: str, *args: str, world: int = 2) -> Path:
        if name not in self.done:
            out = self.root / name
            seconds = launch(out, "--model-dir", str(self.init), *args, world=world)
            print(f"\n[deepspeed tests] launch {name}: {seconds:.1f} s", file=sys.stderr)
            self.done[name] = out
        return self.done[name]

    def ddp(self) -> Path:
        return self.get("ddp", "--modes", ",".join((*ALL, *EARLY_STOP, *BEST_MODEL)))

    def zero(self, stage: int, bf16: bool = False) -> Path:
        name = f"zero{stage}" + ("_bf16" if bf16 else "")
        if bf16:  # lpwd-init's step-2 checkpoint: θ₀ of the fp32 masters
            modes = ("stock", *MODES, *INIT, *EARLY_STOP)
            save = ["--save-steps", "2", "--save-modes", "lpwd-init"]
        elif stage == 2:  # for the resume test (another launch) and θ₀ in the checkpoint
            modes, save = (*ALL, *EARLY_STOP, *BEST_MODEL), ["--save-steps", "2"]
        elif stage == 3:  # resumed in this launch
            resumed = ZERO3_RESUMED
            modes = (*ALL, *resumed, *EARLY_STOP, *BEST_MODEL)
            save = ["--save-steps", "2", "--save-modes", ",".join(m.removesuffix("-resume") for m in resumed)]
        else:
            modes, save = ALL, []
        args = ["--engine", f"zero{stage}", "--modes", ",".join(modes), "--probe", *save]
        return self.get(name, *args, *(["--bf16"] if bf16 else []))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("deepspeed"))


def result(folder: Path, mode: str, rank: int = 0) -> dict[str, torch.Tensor]:
    error = folder / mode / f"error{rank}.txt"
    if error.exists():
        pytest.fail(f"{folder.name}/{mode} raised: {error.read_text()[:2000]}")
    return torch.load(folder / mode / f"rank{rank}.pt", weights_only=True)


def assert_close(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], rtol: float = RTOL,
                 atol: float = ATOL) -> None:
    assert got.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=rtol, atol=atol, msg=name)


def assert_equal(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert got.keys() == ref.keys()
    for name in ref:
        diff = (got[name] - ref[name]).abs().max().item()
        assert torch.equal(got[name], ref[name]), f"{name}: not bitwise equal (max |difference| {diff:.3g})"


def assert_matches_ddp(stage: int, got: dict[str, torch.Tensor], ddp: dict[str, torch.Tensor]) -> None:
    """ZeRO-1/2 partition the optimizer state only and sum gradients as DDP does: bitwise. ZeRO-3: see the
    docstring."""
    if stage in (1, 2):
        assert_equal(got, ddp)
    else:
        assert_close(got, ddp)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stock_trainer_under_zero_matches_ddp(runs: Runs, stage: int) -> None:
    """The harness itself: no LPWD involved, DeepSpeed vs DDP (ZeRO-1/2: bit for bit; ZeRO-3: float32
    rounding)."""
    zero = result(runs.zero(stage), "stock")
    assert_matches_ddp(stage, zero, result(runs.ddp(), "stock"))
    for name, tensor in result(runs.zero(stage), "stock", rank=1).items():
        assert torch.equal(tensor, zero[name]), name


@pytest.mark.parametrize("stage, mode", [(s, m) for s in (1, 2, 3) for m in (*MODES, *RULES)])
def test_lpwd_under_zero_matches_ddp(runs: Runs, stage: int, mode: str) -> None:
    zero = result(runs.zero(stage), mode)
    ddp = result(runs.ddp(), mode)
    assert_matches_ddp(stage, zero, ddp)
    for name, tensor in result(runs.zero(stage), mode, rank=1).items():
        assert torch.equal(tensor, zero[name]), name
    if mode != "wd":  # the mode changed something: not silently AdamW's decay
        wd = result(runs.ddp(), "wd")
        assert any(not torch.allclose(ddp[n], wd[n], rtol=RTOL, atol=ATOL) for n in ddp)


def anchors(folder: Path, mode: str, rank: int) -> list[dict]:
    return json.loads((folder / mode / f"info{rank}.json").read_text())["anchors"]


def decayed_weights(runs: Runs) -> int:
    """How many weights the tiny Llama decays: its 2-D weights (the 1-D norms are HF's exclusions)."""
    from transformers import LlamaForCausalLM

    return sum(p.numel() for p in LlamaForCausalLM.from_pretrained(runs.init).parameters() if p.ndim == 2)


@pytest.mark.parametrize("stage, mode", [(s, m) for s in (1, 2, 3) for m in INIT])
def test_decay_toward_init_under_zero_matches_ddp_with_theta0_per_partition(
    runs: Runs, stage: int, mode: str
) -> None:
    """Target init: ZeRO equals DDP (a θ₀ taken from the wrong tensor, or lost between the per-group
    ``step()`` calls, would not); the result is not the run toward 0; each rank keeps the θ₀ of its own fp32
    partitions (flat, 1-D: half of every decayed group here), DDP a full copy; and holds none while ZeRO
    builds its masters (a full copy per rank until the first step, before 0.5.1)."""
    zero, ddp = result(runs.zero(stage), mode), result(runs.ddp(), mode)
    assert_matches_ddp(stage, zero, ddp)
    for name, tensor in result(runs.zero(stage), mode, rank=1).items():
        assert torch.equal(tensor, zero[name]), name
    toward_zero = result(runs.ddp(), mode.removesuffix("-init"))
    assert any(not torch.allclose(ddp[n], toward_zero[n], rtol=RTOL, atol=ATOL) for n in ddp)
    decayed = decayed_weights(runs)
    for rank in (0, 1):
        full_copy = anchors(runs.ddp(), mode, rank)
        assert sum(a["bytes"] for a in full_copy) == 4 * decayed
        assert all(len(a["shape"]) == 2 for a in full_copy)
        partitions = anchors(runs.zero(stage), mode, rank)
        assert {a["dtype"] for a in partitions} == {"float32"}
        assert all(len(a["shape"]) == 1 for a in partitions)
        # every decayed group's size is even here: ZeRO splits it in two halves with no padding
        assert sum(a["bytes"] for a in partitions) == 4 * decayed // 2
        # no full copy of the model's weights while ZeRO builds its masters: θ₀ is taken at the first step
        info = json.loads((runs.zero(stage) / mode / f"info{rank}.json").read_text())
        assert info["anchor_bytes_at_build"] == 0


@pytest.mark.parametrize("stage", [2, 3])
def test_theta0_of_partitions_stepped_one_group_per_call(stage: int) -> None:
    """In-process, no DeepSpeed: the groups' parameters are replaced by other tensors after LPWD is built
    (as ZeRO puts its partitions in), then each ``step()`` shows one group, as ZeRO-1/2 (a one-group list) or
    ZeRO-3 (the other groups with ``params = []``) do.  θ₀ of every partition must survive the calls that do
    not show it: equal bit for bit to LPWD stepping all groups at once."""
    from hf_lpwd import LPWD

    torch.manual_seed(0)
    start = [torch.randn(6, dtype=torch.float64) for _ in range(3)]
    grads = [[torch.randn(6, dtype=torch.float64) for _ in range(3)] for _ in range(3)]

    def build(tensors: list[torch.Tensor]) -> LPWD:
        groups = [{"params": [t], "lr": 0.1 * (i + 1), "weight_decay": 0.5} for i, t in enumerate(tensors)]
        return LPWD(groups, mode="wd", weight_decay=0.5, decay_target="init")

    reference = [t.clone().requires_grad_() for t in start]
    opt_ref = build(reference)
    model = [t.clone().requires_grad_() for t in start]
    opt = build(model)
    partitions = [t.detach().clone().requires_grad_() for t in start]
    for group, partition in zip(opt.param_groups, partitions, strict=True):
        group["params"] = [partition]
    full = opt.param_groups
    for step_grads in grads:
        for p, q, g in zip(reference, partitions, step_grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        opt_ref.step()
        for index in range(3):
            if stage == 2:
                opt.param_groups = [full[index]]
            else:
                for other, group in enumerate(full):
                    group["params"] = [partitions[other]] if other == index else []
            opt.step()
        opt.param_groups = full
        for group, partition in zip(full, partitions, strict=True):
            group["params"] = [partition]
    for p, q in zip(reference, partitions, strict=True):
        assert torch.equal(p, q)
    assert set(opt.initial_weights) == set(partitions)  # the model's own tensors' θ₀ dropped


class _ZeRO3Masters:
    """The attributes of DeepSpeed's ZeRO-3 optimizer the early-stop settle reads (``_compat/deepspeed.py``),
    around masters LPWD stepped; the copy into the model is recorded, not done."""

    def __init__(self, lpwd, masters: list[torch.Tensor], owners: list[int], swap: bool = False) -> None:
        self.optimizer = lpwd
        self.fp32_partitioned_groups_flat = masters
        self.sub_group_to_group_id = dict(enumerate(owners))
        self.swap_optimizer = swap
        self.persistent_parameters: list = []
        self.calls: list[str] = []

    def _partition_all_parameters(self) -> None:
        self.calls.append("partition")

    def _reassign_or_swap_out_partitioned_parameters(self, index: int) -> None:
        self.calls.append(f"copy {index}")


@pytest.mark.parametrize("target", ["zero", "init"])
def test_zero3_settle_divides_every_sub_group_master_and_leaves_the_groups_as_deepspeed_left_them(
    target: str, caplog: pytest.LogCaptureFixture
) -> None:
    """In-process, no DeepSpeed: two groups, the first stepped as two sub-group masters; after the last step
    ZeRO-3 leaves every group's ``params`` empty, and an early stop must still divide the pending decay out
    of each master (toward θ₀: θ₀ + (θ − θ₀)/(1 − ηλ), each master's own θ₀), copy each sub-group into the
    model once, and give the groups back their empty lists.  With the masters swapped to NVMe it cannot:
    the weights stay, a warning names the reason and the factor, and nothing is pending afterwards."""
    from hf_lpwd import LPWD
    from hf_lpwd.integrations import deepspeed as glue

    torch.manual_seed(0)
    for swap in (False, True):
        masters = [torch.randn(5, dtype=torch.float64, requires_grad=True) for _ in range(3)]
        owners = [0, 0, 1]
        groups = [{"params": [m for m, o in zip(masters, owners, strict=True) if o == g], "weight_decay": lam}
                  for g, lam in ((0, 0.5), (1, 2.0))]
        opt = LPWD(groups, base="sgd", mode="pwd", lr=0.1, decay_target=target)
        start = [m.detach().clone() for m in masters]
        opt.set_lr_scheduler(torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0))  # no max_steps
        opt.pre_step()
        for m in masters:
            m.grad = torch.ones_like(m)
        opt.step()
        pending = opt.pending_decay
        assert pending == {0: 1 - 0.1 * 0.5, 1: 1 - 0.1 * 2.0}
        folded = [m.detach().clone() for m in masters]
        for group in opt.param_groups:
            group["params"] = []  # as ZeRO-3 leaves them between steps
        zero3 = _ZeRO3Masters(opt, masters, owners, swap)
        with caplog.at_level("WARNING", logger="transformers.hf_lpwd"):
            glue.settle(opt, zero3, warn=True)
        assert [g["params"] for g in opt.param_groups] == [[], []]
        assert opt.pending_decay == {}
        if swap:
            assert all(torch.equal(m.detach(), f) for m, f in zip(masters, folded, strict=True))
            assert zero3.calls == []
            (note,) = [r.getMessage() for r in caplog.records if "NVMe" in r.getMessage()]
            assert "0.95" in note and "0.8" in note
            continue
        assert zero3.calls == ["partition", "copy 0", "copy 1", "copy 2"]
        for m, f, s0, owner in zip(masters, folded, start, owners, strict=True):
            factor = pending[owner]
            origin = s0 if target == "init" else torch.zeros_like(s0)
            torch.testing.assert_close(m.detach(), origin + (f - origin) / factor, rtol=1e-12, atol=1e-15)
            assert not torch.allclose(m.detach(), f)


def checkpoint_theta0(folder: Path, stage: int, rank: int) -> list[tuple[list[str], torch.Tensor | None]]:
    """(names of the group's parameters, θ₀ or None) per param group, from lpwd-init's step-2 checkpoint: the
    rank's optimizer file as DeepSpeed wrote it (``bf16_`` prefixed in bf16), read back with torch.load."""
    (path,) = (folder / "lpwd-init" / "checkpoint-2" / "global_step2").glob(
        f"*zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    saved = torch.load(path, weights_only=False)["optimizer_state_dict"]
    saved = saved["optimizer_state_dict"] if stage == 3 else saved["base_optimizer_state"]
    found = []
    for group in saved["param_groups"]:
        (position,) = group["params"]  # one flat partition per group (ZeRO-3: sub_group_size 1e9)
        entry = saved["state"][position]
        found.append((group["param_names"], entry.get("decay_target") if group["weight_decay"] else None))
        assert group["weight_decay"] or "decay_target" not in entry
    return found


def partition(initial: dict[str, torch.Tensor], names: list[str], stage: int, rank: int) -> torch.Tensor:
    """The rank's part of a param group as ZeRO lays it out (every size is even here: no padding): ZeRO-1/2
    flatten the group and split it in halves; ZeRO-3 splits each parameter and concatenates its halves."""
    if stage == 3:
        return torch.cat([initial[n].detach().flatten().chunk(2)[rank] for n in names])
    return torch.cat([initial[n].detach().flatten() for n in names]).chunk(2)[rank]


@pytest.mark.parametrize("stage, bf16", [(2, False), (3, False), (2, True), (3, True)])
def test_checkpoint_holds_theta0_of_each_rank_partition(runs: Runs, stage: int, bf16: bool) -> None:
    """The step-2 checkpoint's optimizer state holds θ₀ of each decayed group's partition on that rank, in
    fp32: the pretrained weights of the group, laid out as ZeRO partitions them, bit for bit.  In bf16
    DeepSpeed trains a bf16 copy of the model and builds its fp32 masters from it, and θ₀ is taken from the
    masters: the bf16 model's initial weights upcast (the fp32 pretrained weights rounded to bf16), which
    differ from the fp32 pretrained weights (asserted)."""
    from transformers import LlamaForCausalLM

    initial = dict(LlamaForCausalLM.from_pretrained(runs.init).named_parameters())
    if bf16:
        initial_fp32 = initial
        initial = {n: p.detach().bfloat16().float() for n, p in initial.items()}
    for rank in (0, 1):
        theta0 = checkpoint_theta0(runs.zero(stage, bf16), stage, rank)
        for names, saved in theta0:
            if saved is None:
                continue
            assert saved.dtype == torch.float32
            assert torch.equal(saved, partition(initial, names, stage, rank)), names
            if bf16:
                assert not torch.equal(saved, partition(initial_fp32, names, stage, rank)), names
        assert sum(saved is not None for _, saved in theta0) == 5  # one decayed group per depth 0..4


@pytest.mark.parametrize("mode", NO_WARMUP)
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_first_decay_without_warmup_under_zero_matches_ddp(runs: Runs, stage: int, mode: str) -> None:
    """warmup_steps=0: the decay before the very first forward is 1 − η₀λ ≠ 1; under ZeRO the model's weights
    (what the first forward sees) are copied into the optimizer's fp32 masters, so the Trainer glue applies it
    to the model's weights in create_optimizer, before DeepSpeed makes that copy. (Adam's eps is 1e-3 in these
    runs: see train_deepspeed.py for why a run without warm-up needs it to compare ZeRO-3 with DDP.)"""
    assert_matches_ddp(stage, result(runs.zero(stage), mode), result(runs.ddp(), mode))


@pytest.mark.parametrize("mode", (*MODES, *INIT, *EARLY_STOP))
def test_bf16_zero3_equals_zero2(runs: Runs, mode: str) -> None:
    """bf16 model, fp32 master partitions in the optimizer; both stages agree bit for bit.  Toward θ₀ too,
    and there the result is not the run toward 0 (observed: 3.6k elements differ, by up to 4.9e-4);
    θ₀ is a flat fp32 copy of this rank's master partitions, half of the decayed weights, none at build.
    An early stop too: the pending decay divided out of the fp32 masters, then copied into the bf16
    weights (ZeRO-2: ``update_lp_params``; ZeRO-3: into the partitions) rounded to nearest alike."""
    zero2 = result(runs.zero(2, bf16=True), mode)
    zero3 = result(runs.zero(3, bf16=True), mode)
    assert_equal(zero3, zero2)
    assert all(torch.isfinite(t).all() for t in zero2.values())
    if mode != "wd":
        other = result(runs.zero(2, bf16=True), mode.removesuffix("-init") if mode in INIT else "wd")
        assert any(not torch.equal(zero2[n], other[n]) for n in zero2)
    if mode in INIT:
        for stage in (2, 3):
            for rank in (0, 1):
                partitions = anchors(runs.zero(stage, bf16=True), mode, rank)
                assert {a["dtype"] for a in partitions} == {"float32"}
                assert all(len(a["shape"]) == 1 for a in partitions)
                assert sum(a["bytes"] for a in partitions) == 4 * decayed_weights(runs) // 2
                info = json.loads((runs.zero(stage, bf16=True) / mode / f"info{rank}.json").read_text())
                assert info["anchor_bytes_at_build"] == 0


@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.parametrize("mode", EARLY_STOP)
def test_early_stop_under_zero_matches_ddp(runs: Runs, mode: str, stage: int) -> None:
    """Stopped after step 2 of 4 at a constant lr (after one warm-up step): the decay folded in for step 3 is
    divided out of DeepSpeed's fp32 master partitions, which are then copied into the model's weights as after
    a step; DDP divides it out of its weights.  ZeRO-2: the same multiplications on the same numbers, bitwise
    equal (without the division ZeRO-2 keeps 1 − ηλ = 0.9985).  ZeRO-3 hands LPWD one sub-group's masters per
    ``step()`` call: the division gives each group all of its masters, then copies them into the partitions
    and gathers the persistent parameters (all of this tiny model's); within the ZeRO-3 tolerance of DDP
    (observed ≤ 1.2e-7; without the division, as before 0.6.1, ~1e-4, relative 3e-4 to 1.5e-3).  Toward θ₀ the
    division is θ₀ + (θ − θ₀)/(1 − ηλ), with the θ₀ of each master partition; the result is not the run toward
    0 (the Trainer's early stop toward θ₀ is checked against a reference, in one process, by
    test_trainer_end.py)."""
    for folder in (runs.zero(stage), runs.ddp()):
        assert json.loads((folder / mode / "info0.json").read_text())["global_step"] == 2
    zero, ddp = result(runs.zero(stage), mode), result(runs.ddp(), mode)
    assert_matches_ddp(stage, zero, ddp)
    for name, tensor in result(runs.zero(stage), mode, rank=1).items():
        assert torch.equal(tensor, zero[name]), name
    if mode != EARLY_STOP[0]:
        toward_zero = result(runs.ddp(), EARLY_STOP[0])
        assert any(not torch.allclose(ddp[n], toward_zero[n], rtol=RTOL, atol=ATOL) for n in ddp)


@pytest.mark.parametrize("engine", ["ddp", "zero2", "zero3"])
@pytest.mark.parametrize("mode", BEST_MODEL)
def test_load_best_model_at_end_is_the_best_checkpoint_and_keeps_theta0(runs: Runs, mode: str,
                                                                       engine: str) -> None:
    """``load_best_model_at_end`` with an early stop at step 3 (a constant lr after warm-up, so a decay is
    folded in for step 4), step 1's checkpoint the best.  On every rank the final weights are that
    checkpoint's weights as saved, bit for bit, not the last checkpoint's, and no decay is pending; under ZeRO
    they equal DDP's as the other runs do (observed: bitwise under ZeRO-3 too).  DeepSpeed's load goes through
    the client optimizer's ``load_state_dict`` (θ₀ and the decay bookkeeping of step 1's checkpoint): toward
    θ₀ each rank then holds exactly the θ₀ it trained with, one copy (DDP: the initial weights per parameter;
    ZeRO: the initial weights of its partitions), not the best checkpoint's weights and not a second copy."""
    from transformers import LlamaForCausalLM

    folder = runs.ddp() if engine == "ddp" else runs.zero(int(engine[-1]))
    info = json.loads((folder / mode / "info0.json").read_text())
    assert info["global_step"] == 3 and Path(info["best_model_checkpoint"]).name == "checkpoint-1"
    best = load_file(str(folder / mode / "checkpoint-1" / "model.safetensors"))
    last = load_file(str(folder / mode / "checkpoint-3" / "model.safetensors"))
    final = result(folder, mode)
    assert best.keys() == final.keys()
    for rank in (0, 1):
        assert_equal(result(folder, mode, rank), best)
    assert any(not torch.equal(last[n], best[n]) for n in best)
    if engine != "ddp":
        assert_matches_ddp(int(engine[-1]), final, result(runs.ddp(), mode))
    if "init" not in mode:
        return
    initial = dict(LlamaForCausalLM.from_pretrained(runs.init).named_parameters())
    for rank in (0, 1):
        held = torch.load(folder / mode / f"theta0_{rank}.pt", weights_only=True)
        assert not held["pre_step_pending"] and not held["pending_decay"] and set(held["applied"]) == {None}
        if engine == "ddp":
            names = [n for group in held["names"] for n in group]
            expected = [initial[n].detach() for n in names]
        else:
            expected = [partition(initial, names, int(engine[-1]), rank) for names in held["names"]]
        assert len(held["theta0"]) == len(expected)
        for got, want in zip(held["theta0"], expected, strict=True):
            assert torch.equal(got, want)


def probe(folder: Path, mode: str) -> dict:
    return json.loads((folder / mode / "probe0.json").read_text())


def test_deepspeed_drives_the_client_optimizer_as_lpwd_assumes(runs: Runs) -> None:
    """The facts the fold relies on; if a DeepSpeed release changes them, this says which."""
    for stage in (1, 2, 3):
        for mode in ("stock", "rwd"):
            info = probe(runs.zero(stage), mode)
            calls = info["create_optimizer_calls"]
            assert (len(calls) == 2 and not calls[0]["optimizer_was_set"]
                    and calls[1]["optimizer_was_set"]), calls
            steps = info["steps"]
            assert len(steps) == 4 * 2, "one step() per param group per optimizer step"
            for i, call in enumerate(steps):
                groups = call["groups"]
                if stage in (1, 2):
                    # param_groups is replaced by a one-group list (the same dict) for the call
                    assert not call["param_groups_is_original_list"] and len(groups) == 1
                    stepped = groups
                else:
                    # the list is kept; the groups not being stepped have params == []
                    assert call["param_groups_is_original_list"] and len(groups) == 2
                    stepped = [g for g in groups if g["params"]]
                    assert len(stepped) == 1
                assert stepped[0]["index_in_original"] == i % 2
                assert stepped[0]["probe_key"] == i % 2, "custom keys in param groups survive"
                (flat,) = stepped[0]["params"]
                assert len(flat["shape"]) == 1 and flat["dtype"] == "float32" and flat["has_grad"]
            if mode == "rwd":
                keys = set(steps[0]["groups"][0]["keys"])
                assert {"depth", "lpwd_multiplier", "param_names"} <= keys, keys
                # the client optimizer is LPWD, holding its base: stages 1-2 swap the wrapper's list only, and
                # LPWD.base_optimizer keeps the full list; stage 3 keeps the one list for both
                assert steps[0]["base_param_groups_len"] == 2, steps[0]
                assert steps[0]["base_groups_are_wrapper_groups"] == (stage == 3)
            else:
                assert steps[0]["base_param_groups_len"] is None  # the stock Trainer's AdamW has no base
            if stage == 2:
                assert info["state_dict_calls"] == 2, \
                    "ZeRO checkpoints save the client optimizer's state_dict()"
    info = probe(runs.zero(2, bf16=True), "rwd")
    assert {p["dtype"] for call in info["steps"] for g in call["groups"] for p in g["params"]} == {"float32"}


@pytest.mark.parametrize("mode", ["stock", "pwd", "lpwd", "lpwd-init", "lpwd-init-earlystop"])
def test_zero3_sub_groups_match_ddp(runs: Runs, mode: str) -> None:
    """sub_group_size=1000: ZeRO-3 steps a param group larger than that per rank in several step() calls, each
    with another flat tensor in the group's params (observed: pwd's two groups of 4480 elements per rank are
    split).  ``lpwd-init``: each sub-group partition keeps its own θ₀ across the calls; an early stop divides
    the pending decay out of all of a group's sub-group partitions, each toward its own θ₀."""
    folder = runs.get("zero3_sub", "--engine", "zero3", "--modes",
                      "stock,pwd,lpwd,lpwd-init,lpwd-init-earlystop", "--sub-group-size", "1000")
    assert_close(result(folder, mode), result(runs.ddp(), mode))


@pytest.mark.parametrize("mode", ["rwd", "lpwd", "lpwd-init"])
def test_zero2_resume_from_checkpoint_is_bitwise(runs: Runs, mode: str) -> None:
    """Checkpoint at step 2 of 4 (the optimizer's state_dict() goes through the client optimizer), resume.
    ``lpwd-init``: θ₀ comes back from the checkpoint onto the partitions (θ₀ taken from the resumed weights
    instead would differ by ~1e-6)."""
    full = runs.zero(2)
    resumed = runs.get("zero2_resume", "--engine", "zero2", "--modes", "rwd,lpwd,lpwd-init", "--probe",
                       "--resume-from", str(full))
    loaded = probe(resumed, mode)
    assert loaded["load_state_dict_calls"] == 1 and "probe_key" in loaded["loaded_group_keys"][0]
    got, ref = result(resumed, mode), result(full, mode)
    for name in ref:
        assert torch.equal(got[name], ref[name]), name


@pytest.mark.parametrize("mode", ["lpwd", "rwd"])
def test_deepspeed_optimizer_section_is_refused_before_training(runs: Runs, mode: str) -> None:
    """LPWD cannot wrap DeepSpeed's own optimizer: refuse with a message naming the key, before any training.

    Without the refusal the Trainer silently trains with DeepSpeed's Adam (LPWD never built) after compiling
    its CPU Adam op (~5 min of g++); --refusal-only turns reaching deepspeed_init into an error instead.
    """
    folder = runs.get("ds_optimizer", "--engine", "zero2", "--modes", "lpwd,rwd", "--ds-optimizer",
                      "--refusal-only", world=1)
    error = folder / mode / "error0.txt"
    assert error.exists(), "not refused"
    message = error.read_text().split("\n\n")[0]
    assert "NOT REFUSED" not in message, message
    assert re.search(r"""['"`]optimizer['"`]""", message), f"the message should name the key: {message}"


@pytest.mark.parametrize("mode", [m.removesuffix("-resume") for m in ZERO3_RESUMED])
def test_zero3_resume_from_checkpoint_is_bitwise(runs: Runs, mode: str) -> None:
    """ZeRO-3: checkpoint at step 2 of 4, resumed (in the same launch) and trained to step 4: bit for bit the
    uninterrupted run (the same partitions stepped in the same order; both sides ZeRO-3, so none of its
    reduction-order differences with DDP).  The optimizer state is loaded once, through the client optimizer,
    with the partitions in the groups (``_set_fp32_optimizer_param_groups``); the resumed run steps 2 of the
    4 steps (not trained again from the start).  ``lpwd-init``: θ₀ of each partition comes back from the
    checkpoint (taken from the resumed partitions instead it would differ)."""
    folder = runs.zero(3)
    full, resumed = probe(folder, mode), probe(folder, f"{mode}-resume")
    assert resumed["load_state_dict_calls"] == 1 and "probe_key" in resumed["loaded_group_keys"][0]
    assert len(full["steps"]) == 2 * len(resumed["steps"]) > 0
    assert json.loads((folder / f"{mode}-resume" / "info0.json").read_text())["global_step"] == 4
    for rank in (0, 1):
        assert_equal(result(folder, f"{mode}-resume", rank), result(folder, mode, rank))
