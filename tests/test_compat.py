"""One guard per private name of another library that ``hf_lpwd/_compat/`` reads.

Each test fails with a message naming the upstream change to look for when the name goes or its meaning
changes, so a new release of transformers, torch, argparse or DeepSpeed that breaks one shows where, before a
run gives silently different numbers.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from hf_lpwd._compat import argparse as compat_argparse
from hf_lpwd._compat import deepspeed as compat_deepspeed
from hf_lpwd._compat import torch as compat_torch
from hf_lpwd._compat import transformers as compat_tf
from hf_lpwd.layers import layer_depths
from tests.tiny import TokenDataset, common_args, tiny_bert, tiny_llama


def test_compat_imports_nothing_from_hf_lpwd() -> None:
    root = Path(compat_tf.__file__).parent
    for path in root.glob("*.py"):
        text = path.read_text()
        assert "from .." not in text and "import hf_lpwd" not in text and "from hf_lpwd" not in text, path


# ------------------------------------------------------------------------------------------ transformers
def test_no_split_modules_still_names_the_block_class() -> None:
    declared = compat_tf.no_split_module_names(tiny_llama())
    assert "LlamaDecoderLayer" in declared, (
        "transformers no longer declares LlamaDecoderLayer in PreTrainedModel._no_split_modules (renamed or "
        f"removed upstream; got {sorted(declared)}): hf_lpwd.model.layers loses its block hint, see "
        "hf_lpwd/_compat/transformers.py::no_split_module_names"
    )


def _meta_model(cls_name: str, config_name: str, **config: object) -> nn.Module:
    import transformers

    cfg = getattr(transformers, config_name)(**config)
    with torch.device("meta"):
        return compat_tf.model_from_config(getattr(transformers, cls_name), cfg)


# Architectures whose _no_split_modules names more than their blocks since transformers 5.25 (patch
# embeddings, decode heads, decoder layers, ASPP necks): the module path reads the declaration, the names
# path does not, so the two agree only while the declaration is read as a hint.
NOT_ONLY_BLOCKS = [
    ("PvtForImageClassification", "PvtConfig", {}),
    ("GLPNForDepthEstimation", "GLPNConfig", {}),
    ("BeitForSemanticSegmentation", "BeitConfig", {"num_hidden_layers": 4, "out_indices": [1, 2, 3, 4]}),
    ("MobileNetV2ForSemanticSegmentation", "MobileNetV2Config", {}),
    ("MobileViTV2ForSemanticSegmentation", "MobileViTV2Config", {}),
    ("CLIPSegForImageSegmentation", "CLIPSegConfig", {}),
]


@pytest.mark.parametrize("cls_name,config_name,config", NOT_ONLY_BLOCKS, ids=[c[0] for c in NOT_ONLY_BLOCKS])
def test_no_split_modules_meaning_module_and_names_paths_agree(cls_name: str, config_name: str,
                                                               config: dict) -> None:
    model = _meta_model(cls_name, config_name, **config)
    names = [n for n, _ in model.named_parameters()]
    from_module, from_names = layer_depths(model), layer_depths(names)
    moved = [n for n in names if from_module[n] != from_names[n]]
    assert not moved, (
        f"{cls_name}: _no_split_modules = {sorted(compat_tf.no_split_module_names(model))} "
        f"moves {len(moved)} "
        f"of {len(names)} depths away from the names path (e.g. {moved[:3]}): transformers changed what it "
        "declares there (as 5.25 did for PVT, CLIPSeg, BEiT ...); see hf_lpwd.model.layers._module_hints"
    )


def test_from_config_builds_the_concrete_class() -> None:
    import transformers

    assert hasattr(transformers.LlamaForCausalLM, "_from_config"), (
        "transformers removed PreTrainedModel._from_config: make hf_lpwd/_compat/transformers.py::"
        "model_from_config build with cls(config) (after setting the attention implementation)"
    )
    model = _meta_model("LlamaForCausalLM", "LlamaConfig", num_hidden_layers=2, hidden_size=16,
                        intermediate_size=32, num_attention_heads=2, num_key_value_heads=1, vocab_size=32)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(1 for n, _ in model.named_parameters() if ".layers." in n and n.endswith("q_proj.weight")) == 2


def test_auto_model_mapping_tells_supported_configs_apart() -> None:
    import transformers

    auto = transformers.AutoModelForCausalLM
    assert getattr(auto, "_model_mapping", None) is not None, (
        "transformers removed _BaseAutoModelClass._model_mapping: hf-lpwd inspect would try every auto "
        "class; "
        "see hf_lpwd/_compat/transformers.py::auto_class_accepts"
    )
    assert compat_tf.auto_class_accepts(auto, transformers.LlamaConfig())
    assert not compat_tf.auto_class_accepts(auto, transformers.ViTConfig()), (
        "AutoModelForCausalLM._model_mapping no longer maps config classes to model classes"
    )


def test_trainer_still_resumes_through_the_private_method() -> None:
    assert compat_tf.trainer_resumes_through_the_private_method(), (
        "transformers' Trainer no longer calls self._load_from_checkpoint(resume_from_checkpoint) (renamed, "
        "new signature, or inlined): LPWDMixin's override would not load the tensors a checkpoint saved "
        "under legacy names (ViT), and a resumed run would go on from the initial weights; move "
        "LOAD_CHECKPOINT_METHOD to the new seam"
    )


def test_trainer_still_pushes_checkpoints_through_the_private_method() -> None:
    assert compat_tf.trainer_pushes_checkpoints_through_the_private_method(), (
        "transformers' Trainer no longer pushes during training through self._push_from_checkpoint("
        "checkpoint_folder) uploading output_dir, or skips a push on other conditions: LPWDMixin's override "
        "would not put lpwd_config.json and the card section in the pushed revisions; move "
        "PUSH_FROM_CHECKPOINT_METHOD and will_push_from_checkpoint to the new seam"
    )


def test_trainer_still_sets_search_trials_through_the_private_method() -> None:
    assert compat_tf.trainer_sets_trials_through_the_private_method(), (
        "transformers' Trainer no longer sets a search trial's values through self._hp_search_setup(trial), "
        "reading self.hp_space(trial) or the trial dict: LPWDMixin's override would not run, a trial's None "
        "would be cast to the previous trial's type and LPWD flags would carry across trials; move "
        "HP_SEARCH_SETUP_METHOD to the new seam"
    )


def test_trainer_still_loads_the_best_model_through_the_private_method() -> None:
    assert compat_tf.trainer_loads_best_model_privately(), (
        "transformers' Trainer no longer calls self._load_best_model() (renamed, new signature, or inlined): "
        "LPWDMixin's override would not run and a pwd run would load the best checkpoint unsettled; find the "
        "new seam in Trainer._inner_training_loop and move LOAD_BEST_MODEL_METHOD"
    )


@pytest.mark.parametrize("samples,batch,accumulation", [(20, 4, 1), (20, 4, 2), (20, 2, 3)])
def test_set_initial_training_values_index_1_is_the_optimizer_steps_per_epoch(
    tmp_path: Path, samples: int, batch: int, accumulation: int
) -> None:
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(**common_args(tmp_path, per_device_train_batch_size=batch,
                                           gradient_accumulation_steps=accumulation, max_steps=-1,
                                           num_train_epochs=1))
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(samples))
    values = trainer.set_initial_training_values(args, trainer.get_train_dataloader())
    batches = math.ceil(samples / batch)
    # the Trainer's count: full accumulation windows, a partial last one counted too
    expected = max(batches // accumulation + int(batches % accumulation > 0), 1)
    assert compat_tf.steps_per_epoch(values) == expected, (
        f"Trainer.set_initial_training_values()[1] = {values[1]} is no longer the optimizer steps per epoch "
        f"(tuple {values}): transformers reordered its return value; fix hf_lpwd/_compat/transformers.py::"
        "steps_per_epoch"
    )


def test_decay_parameter_names_unbound_follows_the_trainer_rule() -> None:
    model = tiny_bert()
    try:
        names = set(compat_tf.decay_parameter_names(model))
    except AttributeError as exc:
        pytest.fail(f"Trainer.get_decay_parameter_names now reads self ({exc}): call it on a Trainer instead")
    all_names = {n for n, _ in model.named_parameters()}
    assert not {n for n in names if n.endswith(".bias") or "LayerNorm" in n}
    assert "bert.encoder.layer.0.attention.self.query.weight" in names
    assert "bert.embeddings.word_embeddings.weight" in names
    assert names < all_names


def test_hf_deepspeed_config_holds_the_loaded_file(tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    from transformers import TrainingArguments

    config = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto",
              "optimizer": {"type": "AdamW"}}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    args = TrainingArguments(**common_args(tmp_path, deepspeed=str(path)))
    loaded = compat_tf.deepspeed_config_dict(args)
    assert loaded is not None and loaded.get("optimizer") == {"type": "AdamW"}, (
        "TrainingArguments.hf_deepspeed_config.config no longer holds the loaded --deepspeed file: the "
        "refusal of a DeepSpeed 'optimizer' section would not fire; fix hf_lpwd/_compat/transformers.py::"
        "deepspeed_config_dict"
    )


# ------------------------------------------------------------------------------------------------- torch
def test_foreach_norm_is_each_l2_norm() -> None:
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(7, 5, generator=gen), torch.randn(3, generator=gen),
               torch.randn(2, 2, 2, generator=gen)]
    norms = compat_torch.foreach_norm(tensors)
    reference = [math.sqrt(sum(float(x) ** 2 for x in t.double().flatten())) for t in tensors]
    assert [float(n) for n in norms] == pytest.approx(reference, rel=1e-6), (
        "torch._foreach_norm no longer returns one L2 norm per tensor"
    )


def test_foreach_lerp_moves_in_place_bit_for_bit() -> None:
    gen = torch.Generator().manual_seed(1)
    tensors = [torch.randn(5, generator=gen), torch.randn(2, 3, generator=gen)]
    ends = [torch.randn_like(t) for t in tensors]
    expected = [t.clone().lerp_(e, 0.125) for t, e in zip(tensors, ends, strict=True)]
    compat_torch.foreach_lerp_(tensors, ends, 0.125)
    assert all(torch.equal(t, e) for t, e in zip(tensors, expected, strict=True)), (
        "torch._foreach_lerp_ no longer equals t.lerp_(end, weight) bit for bit: the decay toward θ₀ "
        "(hf_lpwd/optim/target.py) changed; fix hf_lpwd/_compat/torch.py::foreach_lerp_"
    )


def test_foreach_copy_writes_each_source_in_place() -> None:
    gen = torch.Generator().manual_seed(2)
    tensors = [torch.zeros(5), torch.zeros(3, dtype=torch.bfloat16)]
    packed = torch.randn(8, generator=gen)
    sources = list(packed.split([5, 3]))
    ids = [t.data_ptr() for t in tensors]
    compat_torch.foreach_copy_(tensors, sources)
    assert [t.data_ptr() for t in tensors] == ids
    assert torch.equal(tensors[0], sources[0]) and torch.equal(tensors[1], sources[1].bfloat16()), (
        "torch._foreach_copy_ no longer equals t.copy_(s) per pair: the packed rounded step "
        "(hf_lpwd/optim/rounded_step.py) writes back through it; fix hf_lpwd/_compat/torch.py::foreach_copy_"
    )


def test_foreach_add_counts_each_step_counter_in_place() -> None:
    counters = [torch.tensor(0.0), torch.tensor(41.0), torch.tensor(7.0, dtype=torch.float64)]
    ids = [t.data_ptr() for t in counters]
    compat_torch.foreach_add_(counters, 1.0)
    assert [t.data_ptr() for t in counters] == ids
    assert [t.item() for t in counters] == [1.0, 42.0, 8.0] and counters[2].dtype == torch.float64, (
        "torch._foreach_add_ no longer adds in place per tensor: the rounded step's counters "
        "(hf_lpwd/optim/rounded_step.py) go through it; fix hf_lpwd/_compat/torch.py::foreach_add_"
    )


def test_foreach_mul_scales_in_place_bit_for_bit() -> None:
    gen = torch.Generator().manual_seed(1)
    tensors = [torch.randn(4, 3, generator=gen), torch.randn(5, generator=gen, dtype=torch.float64)]
    expected = [t * 0.875 for t in tensors]
    ids = [t.data_ptr() for t in tensors]
    compat_torch.foreach_mul_(tensors, 0.875)
    assert [t.data_ptr() for t in tensors] == ids
    assert all(torch.equal(t, e) for t, e in zip(tensors, expected, strict=True)), (
        "torch._foreach_mul_ no longer equals t.mul_(factor) bit for bit"
    )


def test_optimizer_hook_dicts_hold_the_publicly_registered_hooks() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1)

    def pre(o):
        return None

    def post(o, sd):
        return sd

    def load_pre(o, sd):
        return sd

    def load_post(o):
        return None

    opt.register_state_dict_pre_hook(pre)
    opt.register_state_dict_post_hook(post)
    opt.register_load_state_dict_pre_hook(load_pre)
    opt.register_load_state_dict_post_hook(load_post)
    try:
        dicts = compat_torch.optimizer_hook_dicts(opt)
    except AttributeError as exc:
        pytest.fail(f"torch renamed the Optimizer hook dicts ({exc}): LPWD.state_dict would drop user hooks")
    assert [list(d.values()) for d in dicts] == [[pre], [post], [load_pre], [load_post]], (
        "torch's Optimizer hook dicts no longer hold the hooks register_*_hook adds"
    )


def test_step_without_hooks_skips_the_global_step_hooks() -> None:
    param = nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([param], lr=0.5)
    calls: list[str] = []
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(lambda o, a, k: calls.append("pre"))
    try:
        assert getattr(type(opt).step, "hooked", False), (
            "torch no longer marks the wrapped Optimizer.step with `hooked` "
            "(Optimizer._patch_step_function): "
            "step_without_hooks would call the hooked step, and every hook would fire twice per LPWD step"
        )
        param.grad = torch.ones(2)
        compat_torch.step_without_hooks(type(opt))(opt)
        assert calls == [] and torch.equal(param.detach(), torch.full((2,), 0.5))
        opt.step()
        assert calls == ["pre"] and torch.equal(param.detach(), torch.zeros(2))
    finally:
        handle.remove()


def test_from_pretrained_marks_the_tensors_it_loaded(tmp_path: Path) -> None:
    """Target ``init`` tells a new head (decays toward 0) from loaded weights (toward θ₀) by this mark."""
    from transformers import BertForSequenceClassification, BertModel

    base = tiny_bert().bert
    assert isinstance(base, BertModel)
    base.save_pretrained(tmp_path)
    model = BertForSequenceClassification.from_pretrained(tmp_path)
    marks = {name: compat_tf.loaded_from_checkpoint(p) for name, p in model.named_parameters()}
    new = sorted(name for name, mark in marks.items() if not mark)
    assert new == ["classifier.bias", "classifier.weight"] and all(
        mark is True for name, mark in marks.items() if name not in new), (
        "transformers no longer marks the tensors from_pretrained loaded with `_is_hf_initialized = True` "
        f"(new: {new}): --lpwd_decay_target init cannot tell a new head from pretrained weights; fix "
        "hf_lpwd/_compat/transformers.py::loaded_from_checkpoint"
    )


# ---------------------------------------------------------------------------------------------- argparse
def test_parser_actions_are_the_added_actions_in_order() -> None:
    parser = argparse.ArgumentParser()
    first = parser.add_argument("--alpha", type=int, default=1)
    second = parser.add_argument("--beta", default="x")
    actions = compat_argparse.parser_actions(parser)
    assert [a for a in actions if a.dest in ("alpha", "beta")] == [first, second], (
        "argparse.ArgumentParser._actions no longer lists the added actions: the recipes' config-file "
        "defaults and 'did you mean' hints would be lost"
    )
    for action in actions:
        action.default = argparse.SUPPRESS
    assert vars(parser.parse_args(["--beta", "y"])) == {"beta": "y"}


# --------------------------------------------------------------------------------------------- DeepSpeed
def test_zero3_partition_attribute_is_ds_tensor() -> None:
    pytest.importorskip("deepspeed")
    import inspect

    from deepspeed.runtime.zero import partition_parameters

    source = inspect.getsource(partition_parameters)
    assert "param.ds_tensor = " in source, (
        "DeepSpeed's ZeRO-3 no longer keeps a parameter's partition in `ds_tensor`: pwd's initial decay "
        "under "
        "zero.Init would scale the empty placeholder; fix hf_lpwd/_compat/deepspeed.py::zero3_partition"
    )
    plain = torch.zeros(3)
    assert compat_deepspeed.zero3_partition(plain) is plain


def test_zero3_masters_are_where_an_early_stop_divides_the_decay_out() -> None:
    """An early stop under ZeRO-3 divides pwd's pending decay out of the fp32 masters and copies them into the
    model as ``step()`` does (``hf_lpwd/_compat/deepspeed.py``); the names it reads must still mean that.
    Behaviour: ``tests/test_deepspeed.py::test_early_stop_under_zero_matches_ddp``."""
    pytest.importorskip("deepspeed")
    import inspect

    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3 as Stage3

    step = inspect.getsource(Stage3)  # step() itself is wrapped (nvtx): read the class
    for used in ("self._partition_all_parameters()", "self._reassign_or_swap_out_partitioned_parameters(",
                 "self.fp32_partitioned_groups_flat[sub_group_id]",
                 "self.sub_group_to_group_id[sub_group_id]", "['params'] = [fp32_param]"):
        assert used in step, (
            f"DeepSpeed's ZeRO-3 optimizer no longer does `{used}`: the early-stop settle of "
            "hf_lpwd/_compat/deepspeed.py (zero3_masters, zero3_masters_to_model) must follow its new step"
        )
    assert "self.persistent_parameters[0].all_gather(self.persistent_parameters)" in step, (
        "DeepSpeed's ZeRO-3 no longer gathers its persistent parameters after a step as "
        "hf_lpwd/_compat/deepspeed.py::zero3_masters_to_model does"
    )
    assert not compat_deepspeed.is_zero3_optimizer(torch.optim.SGD([torch.zeros(1, requires_grad=True)]))


def test_call_with_recompile_limit_compiles_past_dynamos_default_and_restores_it() -> None:
    """12 list lengths are 12 variants of one function: dynamo's default budget (8) would run the last ones
    eagerly; inside the helper each is compiled, and the process-wide limit is left as it was."""
    from hf_lpwd._compat.torch import call_with_recompile_limit

    compiled_graphs = []

    def counting_backend(gm, example_inputs):
        compiled_graphs.append(gm)
        return gm.forward

    def total(tensors):
        out = tensors[0] * 0
        for t in tensors:
            out = out + t
        return out

    fn = torch.compile(total, backend=counting_backend, dynamic=True)
    before = torch._dynamo.config.recompile_limit
    for count in range(1, 13):
        got = call_with_recompile_limit(fn, ([torch.ones(3)] * count,), 64)
        assert torch.equal(got, torch.full((3,), float(count)))
    assert len(compiled_graphs) == 12 > before
    assert torch._dynamo.config.recompile_limit == before


def test_chained_scheduler_keeps_its_schedulers_where_lpwd_reads_the_step_count() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
    inner = [torch.optim.lr_scheduler.ExponentialLR(opt, 0.9), torch.optim.lr_scheduler.StepLR(opt, 2)]
    chained = torch.optim.lr_scheduler.ChainedScheduler(inner, optimizer=opt)
    assert compat_torch.chained_schedulers(chained) == inner, (
        "ChainedScheduler._schedulers changed: pwd's fold reads the step count of a chained schedule from "
        "its first scheduler; fix hf_lpwd/_compat/torch.py::chained_schedulers"
    )
    assert compat_torch.chained_schedulers(inner[0]) == []
