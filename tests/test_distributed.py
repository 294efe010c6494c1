"""LPWD under DDP, FSDP2 and FSDP1: real 2-process runs on CPU (torchrun, gloo).

Tolerance against one process: float32 all-reduce sums two half-batch gradients, one process takes
one mean over the whole batch; the two orders of summation differ by about one ulp per gradient
element, and Adam's m/(√v+ε) passes that on to the update almost unchanged (η·u is bounded by η, so
errors do not grow over 4 steps). Observed here: 7e-8 relative (DDP), 5e-7 (FSDP1). We assert
rtol=1e-5, atol=1e-6: about 10× the observed worst case, far below the effect of one decay step
(η·λ = 1.5e-3 relative), so a skipped or doubled decay on any rank would fail.

Decay toward θ₀ (``--lpwd_decay_target init``) runs in the DDP and FSDP2 launches (``--targets zero,init``: a
second Trainer run in the same process, ~5 s each instead of a launch of its own).  FSDP2 equals DDP there
too (observed: identical), and toward θ₀ differs from toward 0 by up to 2e-4, 200× the tolerance.  The FSDP1
plain loop and its one-process reference run toward θ₀ the same way (a second run in each launch: 0.04 s
and 0.15 s measured): FSDP1 equals one process within the same tolerance (observed ≤ 1.2e-7
absolute, as toward 0), toward θ₀ differs from toward 0 by up to 5.3e-3 (its lr is constant from step 0), and
θ₀ is cloned from FSDP1's 1-D views into each rank's flat shard: the two ranks held 18112 + 17728 bytes, the
35840 of one full copy between them, 7 and 13 of the θ₀ tensors empty.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tiny import ROOT, offline_env

SCRIPT = str(ROOT / "tests" / "scripts" / "train_distributed.py")
pytestmark = pytest.mark.slow


def run(*args: str, world: int = 1) -> None:
    env = offline_env()
    launcher = [sys.executable] if world == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world)]
    proc = subprocess.run([*launcher, SCRIPT, *args], env=env, timeout=420, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


TARGETS = ("--targets", "zero,init")  # the Trainer launches train toward 0 (OUT) and toward θ₀ (OUT/init)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist")
    run("single", str(root / "x"), "--model-dir", str(root / "init"), "--save-init")
    return root


def load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def groups(path: Path) -> list:
    return json.loads(path.read_text())


def assert_same_training(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert got.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-6, msg=name)


def test_ddp_ranks_are_identical_and_match_one_process(runs: Path) -> None:
    run("single", str(runs / "single"), "--model-dir", str(runs / "init"))
    run("ddp", str(runs / "ddp"), "--model-dir", str(runs / "init"), *TARGETS, world=2)
    rank0, rank1 = load(runs / "ddp" / "rank0.pt"), load(runs / "ddp" / "rank1.pt")
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    assert_same_training(rank0, load(runs / "single" / "rank0.pt"))
    assert groups(runs / "ddp" / "groups0.json") == groups(runs / "single" / "groups0.json")
    initial = load_initial(runs)
    assert any(not torch.equal(initial[n], rank0[n]) for n in rank0)
    assert_trainer_outputs(runs / "ddp")


def assert_trainer_outputs(out: Path) -> None:
    """Every checkpoint has lpwd_config.json; the warm-up from lr 0 made every decay foldable (no pass)."""
    for step in (2, 4):
        assert json.loads((out / f"checkpoint-{step}" / "lpwd_config.json").read_text())["mode"] == "lpwd"
    for rank in (0, 1):
        assert json.loads((out / f"trainer{rank}.json").read_text())["fold_corrections"] == 0


def load_initial(runs: Path) -> dict[str, torch.Tensor]:
    from transformers import LlamaForCausalLM

    return {n: p.detach() for n, p in LlamaForCausalLM.from_pretrained(runs / "init").named_parameters()}


def test_fsdp2_sharded_dtensor_parameters_match_ddp(runs: Path) -> None:
    if not (runs / "ddp" / "rank0.pt").exists():
        run("ddp", str(runs / "ddp"), "--model-dir", str(runs / "init"), *TARGETS, world=2)
    run("fsdp2", str(runs / "fsdp2"), "--model-dir", str(runs / "init"), *TARGETS, world=2)  # DTensor params
    fsdp = load(runs / "fsdp2" / "rank0.pt")
    assert_same_training(fsdp, load(runs / "ddp" / "rank0.pt"))
    for name, tensor in load(runs / "fsdp2" / "rank1.pt").items():
        assert torch.equal(tensor, fsdp[name]), name
    depths = {(d, lam) for d, lam, _ in groups(runs / "fsdp2" / "groups0.json")}
    assert depths == {(d, lam) for d, lam, _ in groups(runs / "ddp" / "groups0.json")}
    assert_trainer_outputs(runs / "fsdp2")
    # Per-depth norms from local shards + one all-reduce equal DDP's norms of the full parameters.
    fsdp_norms = json.loads((runs / "fsdp2" / "trainer0.json").read_text())["norms"]
    ddp_norms = json.loads((runs / "ddp" / "trainer0.json").read_text())["norms"]
    assert fsdp_norms and len(fsdp_norms) == len(ddp_norms) and set(fsdp_norms[0]) == set(ddp_norms[0])
    for got, ref in zip(fsdp_norms, ddp_norms, strict=True):
        assert got == pytest.approx(ref, rel=1e-5)


def anchors(out: Path, rank: int) -> list[dict]:
    return json.loads((out / f"trainer{rank}.json").read_text())["anchors"]


def test_fsdp2_decay_toward_init_matches_ddp_with_theta0_sharded(runs: Path) -> None:
    """Target init: FSDP2 equals DDP; θ₀ is a DTensor sharded like its parameter (each rank holds half)."""
    if not (runs / "fsdp2" / "init" / "rank0.pt").exists():
        test_fsdp2_sharded_dtensor_parameters_match_ddp(runs)
    ddp, fsdp = load(runs / "ddp" / "init" / "rank0.pt"), load(runs / "fsdp2" / "init" / "rank0.pt")
    assert_same_training(fsdp, ddp)
    for name, tensor in load(runs / "fsdp2" / "init" / "rank1.pt").items():
        assert torch.equal(tensor, fsdp[name]), name
    toward_zero = load(runs / "ddp" / "rank0.pt")  # the same run toward 0: a target ignored would equal it
    assert any(not torch.allclose(ddp[n], toward_zero[n], rtol=1e-5, atol=1e-6) for n in ddp)
    # Decayed here: every 2-D weight of the tiny Llama (the 1-D norms are HF's exclusions, λ = 0).
    decayed = sum(t.numel() for t in load_initial(runs).values() if t.ndim == 2)
    for rank in (0, 1):
        full_copies, shards = anchors(runs / "ddp" / "init", rank), anchors(runs / "fsdp2" / "init", rank)
        assert sum(a["bytes"] for a in full_copies) == 4 * decayed  # fp32: 4 bytes per decayed weight
        assert not any(a["dtensor"] for a in full_copies)
        assert all(a["dtensor"] for a in shards) and len(shards) == len(full_copies)
        assert sum(a["bytes"] for a in shards) == 4 * decayed // 2
        for shard, whole in zip(shards, full_copies, strict=True):  # dim 0 split in two (all sizes even)
            assert [2 * shard["shape"][0], *shard["shape"][1:]] == whole["shape"]


def run_fsdp1(runs: Path) -> None:
    """The plain loop in one process and under FSDP1, each toward 0 (OUT) and toward θ₀ (OUT/init)."""
    if not (runs / "fsdp1" / "init" / "rank1.pt").exists():
        run("plain", str(runs / "plain"), "--model-dir", str(runs / "init"), *TARGETS)
        run("fsdp1", str(runs / "fsdp1"), "--model-dir", str(runs / "init"), *TARGETS, world=2)


def test_fsdp1_prefixed_names_and_empty_shards(runs: Path) -> None:
    run_fsdp1(runs)
    layout = json.loads((runs / "fsdp1" / "layout0.json").read_text())
    assert layout["num_blocks"] == 3 and layout["empty_shards"] > 0
    assert layout["anchors"] == layout["anchors_at_build"] == []  # toward 0: no θ₀
    fsdp_groups = groups(runs / "fsdp1" / "groups0.json")
    plain_groups = groups(runs / "plain" / "groups0.json")
    assert [(d, lam) for d, lam, _ in fsdp_groups] == [(d, lam) for d, lam, _ in plain_groups]
    for (_, _, fsdp_names), (_, _, plain_names) in zip(fsdp_groups, plain_groups, strict=True):
        assert [n.replace("_fsdp_wrapped_module.", "") for n in fsdp_names] == plain_names
    assert_same_training(load(runs / "fsdp1" / "rank0.pt"), load(runs / "plain" / "rank0.pt"))


def test_fsdp1_decay_toward_init_matches_one_process_with_theta0_sharded(runs: Path) -> None:
    """Target init under FSDP1 (``use_orig_params=True``): θ₀ is cloned from each parameter as the optimizer
    sees it, FSDP1's 1-D view into the rank's flat shard (empty where the shard holds none of it); the decay
    is a lerp toward it on those views.  Equal to one process within float32 rounding, as toward 0; differs
    from toward 0; each rank holds θ₀ of its shard only (the two ranks together hold each decayed weight
    once), the same θ₀ tensors at the end as when built (none taken late from trained weights)."""
    run_fsdp1(runs)
    plain, fsdp = load(runs / "plain" / "init" / "rank0.pt"), load(runs / "fsdp1" / "init" / "rank0.pt")
    assert_same_training(fsdp, plain)
    toward_zero = load(runs / "plain" / "rank0.pt")
    assert any(not torch.allclose(plain[n], toward_zero[n], rtol=1e-5, atol=1e-6) for n in plain)
    sizes = {n: t.numel() for n, t in load_initial(runs).items()}
    decayed = sum(sizes[n] for _, lam, names in groups(runs / "plain" / "init" / "groups0.json") if lam > 0
                  for n in names)
    one = json.loads((runs / "plain" / "init" / "layout0.json").read_text())["anchors"]
    assert sum(a["bytes"] for a in one) == 4 * decayed and all(len(a["shape"]) == 2 for a in one)
    per_rank = []
    for rank in (0, 1):
        layout = json.loads((runs / "fsdp1" / "init" / f"layout{rank}.json").read_text())
        shards = layout["anchors"]
        assert shards == layout["anchors_at_build"]
        assert len(shards) == len(one) and all(len(a["shape"]) == 1 and not a["dtensor"] for a in shards)
        per_rank.append(sum(a["bytes"] for a in shards))
    assert sum(per_rank) == 4 * decayed and 0 < min(per_rank) and max(per_rank) < 4 * decayed
    assert any(a["bytes"] == 0 for rank in (0, 1) for a in json.loads(
        (runs / "fsdp1" / "init" / f"layout{rank}.json").read_text())["anchors"]), "no empty shard's θ₀"
