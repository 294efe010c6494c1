"""Param groups: LPWD multipliers, decay membership and interplay with torch and the Trainer.

The tiny Llama used here has 2 blocks, so n = 4 levels and multipliers 1/4, 2/4, 3/4, 4/4.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hf_lpwd.groups import default_decay_parameter_names, layer_table, lpwd_param_groups
from tests.tiny import tiny_llama

LAYER = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def _tiny_llama() -> nn.Module:
    return tiny_llama(vocab=50, heads=4, kv_heads=2, seed=0)


def _summary(groups):
    return [(g["depth"], g["weight_decay"], g["lpwd_multiplier"], g["param_names"]) for g in groups]


def _layer(i: int, parts) -> list[str]:
    return [f"model.layers.{i}.{p}.weight" for p in parts]


NORMS = ["input_layernorm", "post_attention_layernorm"]


def test_layerwise_groups_by_hand():
    groups = lpwd_param_groups(_tiny_llama(), weight_decay=0.1)
    assert _summary(groups) == [
        (0, pytest.approx(0.025), 0.25, ["model.embed_tokens.weight"]),
        (1, pytest.approx(0.05), 0.5, _layer(0, LAYER)),
        (1, 0.0, 0.0, _layer(0, NORMS)),
        (2, pytest.approx(0.075), 0.75, _layer(1, LAYER)),
        (2, 0.0, 0.0, _layer(1, NORMS)),
        (3, pytest.approx(0.1), 1.0, ["lm_head.weight"]),
        (3, 0.0, 0.0, ["model.norm.weight"]),
    ]
    for g in groups:
        assert type(g["depth"]) is int
        assert g["lr_multiplier"] == 1.0 and "tied" not in g


def test_group_params_are_the_named_parameters():
    model = _tiny_llama()
    for g in lpwd_param_groups(model, weight_decay=0.1):
        assert [id(p) for p in g["params"]] == [id(model.get_parameter(n)) for n in g["param_names"]]


def test_decay_embeddings_false_zeroes_depth_zero():
    groups = lpwd_param_groups(_tiny_llama(), weight_decay=0.1, decay_embeddings=False)
    assert _summary(groups)[0] == (0, 0.0, 0.0, ["model.embed_tokens.weight"])
    assert groups[1]["weight_decay"] == pytest.approx(0.05)


def test_classic_groups_match_trainer(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = _tiny_llama()
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)
    args = TrainingArguments(output_dir=str(tmp_path), weight_decay=0.1, report_to=[], use_cpu=True)
    trainer_groups = Trainer(model=model, args=args).create_optimizer().param_groups
    ours = lpwd_param_groups(model, weight_decay=0.1, layerwise=False)
    assert ([[id(p) for p in g["params"]] for g in ours]
            == [[id(p) for p in g["params"]] for g in trainer_groups])
    assert [(g["weight_decay"], g["depth"], g["lpwd_multiplier"]) for g in ours] == [(0.1, None, 1.0),
                                                                                      (0.0, None, 0.0)]
    assert "model.layers.0.mlp.up_proj.weight" not in ours[0]["param_names"]


def test_frozen_parameters_are_left_out_but_keep_depths():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    groups = lpwd_param_groups(model, weight_decay=1.0)
    prefix = "base_model.model.model.layers"
    assert _summary(groups) == [
        (1, 0.5, 0.5, [f"{prefix}.0.self_attn.q_proj.lora_A.default.weight",
                       f"{prefix}.0.self_attn.q_proj.lora_B.default.weight"]),
        (2, 0.75, 0.75, [f"{prefix}.1.self_attn.q_proj.lora_A.default.weight",
                         f"{prefix}.1.self_attn.q_proj.lora_B.default.weight"]),
    ]


def test_decay_names_from_caller():
    model = _tiny_llama()
    # The Trainer passes its own decay list; a name left out of it gets no decay.
    decay = [n for n in default_decay_parameter_names(model) if n != "lm_head.weight"]
    groups = lpwd_param_groups(model, 0.1, decay_names=decay)
    assert _summary(groups)[-1] == (3, 0.0, 0.0, ["model.norm.weight", "lm_head.weight"])  # model order
    # no_decay_names alone replaces transformers' rule: norms are then decayed too.
    groups = lpwd_param_groups(model, 0.1, no_decay_names=["model.embed_tokens.weight"])
    assert _summary(groups)[0] == (0, 0.0, 0.0, ["model.embed_tokens.weight"])
    assert groups[1]["param_names"] == _layer(0, LAYER[:4]) + _layer(0, LAYER[4:]) + _layer(0, NORMS)


def test_default_decay_names_follow_transformers():
    names = default_decay_parameter_names(_tiny_llama())
    assert "model.layers.0.self_attn.q_proj.weight" in names
    assert "model.layers.0.input_layernorm.weight" not in names
    assert "model.norm.weight" not in names


def test_moe_fused_experts_are_decayed_at_their_layer():
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4)
    groups = lpwd_param_groups(MixtralForCausalLM(cfg), 0.1)
    by_name = {n: g for g in groups for n in g["param_names"]}
    assert by_name["model.layers.1.mlp.experts.gate_up_proj"]["weight_decay"] == pytest.approx(0.075)
    assert by_name["model.layers.0.mlp.gate.weight"]["weight_decay"] == pytest.approx(0.05)


def test_groups_work_in_torch_optimizer():
    model = _tiny_llama()
    groups = lpwd_param_groups(model, 0.1)
    opt = torch.optim.AdamW(groups, lr=1e-3)
    loss = model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss
    loss.backward()
    opt.step()
    state_groups = opt.state_dict()["param_groups"]
    assert state_groups[0]["param_names"] == ["model.embed_tokens.weight"]
    assert [g["depth"] for g in state_groups] == [0, 1, 1, 2, 2, 3, 3]


def test_layer_table_by_hand():
    rows = layer_table(lpwd_param_groups(_tiny_llama(), 0.1))
    # Per block: q 16*16, k 8*16, v 8*16, o 16*16, gate/up/down 32*16 each, two norms of 16.
    per_block = 256 + 128 + 128 + 256 + 3 * 512 + 2 * 16
    assert [(r["depth"], r["tensors"], r["params"], r["decayed_tensors"]) for r in rows] == [
        (0, 1, 800, 1), (1, 9, per_block, 7), (2, 9, per_block, 7), (3, 2, 800 + 16, 1)]
    assert [r["multiplier"] for r in rows] == [0.25, 0.5, 0.75, 1.0]
    assert [r["lr_multiplier"] for r in rows] == [1.0, 1.0, 1.0, 1.0]
    assert [r["weight_decay"] for r in rows] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert rows[3]["examples"] == ["lm_head.weight", "model.norm.weight"]


def test_layer_pattern_is_passed_through():
    model = _tiny_llama()
    groups = lpwd_param_groups(model, 0.1, layer_pattern=lambda n: 0 if ".layers." in n else None)
    # One block: n = 3 levels.
    assert [(g["depth"], g["lpwd_multiplier"]) for g in groups if g["lpwd_multiplier"]] == [
        (0, pytest.approx(1 / 3)), (1, pytest.approx(2 / 3)), (2, 1.0)]
    with pytest.raises(ValueError, match="layer_pattern"):
        lpwd_param_groups(model, 0.1, layer_pattern="(")


# --------------------------------------------------------------------------- profiles: λ and lr per depth
def test_uniform_profile_with_layer_lr_decay_by_hand():
    """2 blocks, γ = 0.5: lr multipliers γ^(N+1−d) = 1/8, 1/4, 1/2, 1; λ the same at every depth."""
    groups = lpwd_param_groups(_tiny_llama(), weight_decay=0.1, layerwise=False, layer_lr_decay=0.5)
    assert [(g["depth"], g["weight_decay"], g["lpwd_multiplier"], g["lr_multiplier"]) for g in groups] == [
        (0, 0.1, 1.0, 0.125), (1, 0.1, 1.0, 0.25), (1, 0.0, 0.0, 0.25), (2, 0.1, 1.0, 0.5),
        (2, 0.0, 0.0, 0.5), (3, 0.1, 1.0, 1.0), (3, 0.0, 0.0, 1.0)]


def test_layerwise_profile_with_layer_lr_decay_and_lpwd_applies_the_multiplier():
    from hf_lpwd import LPWD

    groups = lpwd_param_groups(_tiny_llama(), weight_decay=0.2, layer_lr_decay=0.5)
    assert [(g["depth"], g["lr_multiplier"]) for g in groups if g["weight_decay"] > 0] == [
        (0, 0.125), (1, 0.25), (2, 0.5), (3, 1.0)]
    opt = LPWD(groups, mode="pwd", lr=0.08)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.02, 0.02, 0.04, 0.04, 0.08, 0.08]
    own = LPWD([{**groups[0], "lr": 0.5}, *groups[1:]], mode="pwd", lr=0.08)
    assert own.param_groups[0]["lr"] == 0.5  # an lr the caller set is left alone
    extra = torch.nn.Parameter(torch.ones(2))
    opt.add_param_group({"params": [extra], "param_names": ["extra"], "lr_multiplier": 0.25})
    assert opt.param_groups[-1]["lr"] == 0.02 and opt.param_groups[-1]["weight_decay"] == 0.01


@pytest.mark.parametrize("gamma", [0.0, -0.5, 1.01, float("nan")])
def test_bad_layer_lr_decay_is_refused(gamma):
    with pytest.raises(ValueError, match=r"layer_lr_decay"):
        lpwd_param_groups(_tiny_llama(), 0.1, layer_lr_decay=gamma)


def _tied_llama() -> nn.Module:
    return tiny_llama(vocab=50, heads=4, kv_heads=2, tied=True)


def test_tied_embedding_sits_at_the_input_by_default_and_the_table_says_so():
    from hf_lpwd.groups import format_layer_table

    model = _tied_llama()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    groups = lpwd_param_groups(model, weight_decay=0.1)
    assert _summary(groups)[0] == (0, pytest.approx(0.025), 0.25, ["model.embed_tokens.weight"])
    assert groups[0]["tied"] == ["lm_head.weight = model.embed_tokens.weight"]
    assert _summary(groups)[-1] == (3, 0.0, 0.0, ["model.norm.weight"])  # no separate head matrix
    text = format_layer_table(layer_table(groups))
    assert text.splitlines()[-1] == "tied: lm_head.weight = model.embed_tokens.weight (depth 0)"


def test_tied_embedding_at_the_output_gets_the_heads_rate():
    groups = lpwd_param_groups(_tied_llama(), weight_decay=0.1, tied_depth="output", layer_lr_decay=0.5)
    assert [(g["depth"], g["weight_decay"], g["lr_multiplier"], g["param_names"]) for g in groups][-2] == (
        3, pytest.approx(0.1), 1.0, ["model.embed_tokens.weight"])
    assert all(g["depth"] != 0 for g in groups)  # nothing else sits before the first block
