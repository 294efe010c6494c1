"""Depth parsing on real tiny models and on hand-written name lists.

Expected depths are written by hand, as name prefix -> depth, and every parameter of a model
must match exactly one prefix, so nothing escapes the check.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from hf_lpwd.layers import layer_depths, layer_depths_with_count, normalize_name
from tests.tiny import tiny_bert, tiny_llama, tiny_llama_config


def _tiny_bert() -> nn.Module:
    return tiny_bert(vocab=50, num_labels=3)


def _llama_config():
    return tiny_llama_config(vocab=50, heads=4, kv_heads=2)


def _tiny_llama() -> nn.Module:
    return tiny_llama(vocab=50, heads=4, kv_heads=2)


def _tiny_llama_lora() -> nn.Module:
    from peft import LoraConfig, get_peft_model

    return get_peft_model(_tiny_llama(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))


def _tiny_t5() -> nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=2,
                   num_heads=2)
    return T5ForConditionalGeneration(cfg)


def _tiny_swin() -> nn.Module:
    from transformers import SwinConfig, SwinForImageClassification

    cfg = SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[2, 1], num_heads=[2, 2],
                     window_size=2, num_labels=3)
    return SwinForImageClassification(cfg)


def _tiny_llava() -> nn.Module:
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=2, image_size=32, patch_size=8)
    return LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=_llama_config(),
                                                     image_token_id=3))


def _tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2))


def _tiny_mixtral() -> nn.Module:
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                        num_experts_per_tok=2)
    return MixtralForCausalLM(cfg)


def _tiny_xlmr_lora() -> nn.Module:
    """XLM-RoBERTa registers its classifier before ``roberta``; PEFT wraps it and keeps a trained copy."""
    from peft import LoraConfig, get_peft_model
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    cfg = XLMRobertaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2, max_position_embeddings=40, num_labels=3)
    return get_peft_model(XLMRobertaForSequenceClassification(cfg),
                          LoraConfig(r=2, target_modules=["query", "value"], modules_to_save=["classifier"]))


def _tiny_camembert_mlm() -> nn.Module:
    from transformers import CamembertConfig, CamembertForMaskedLM

    cfg = CamembertConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=40)
    return CamembertForMaskedLM(cfg)


def _tiny_convnextv2() -> nn.Module:
    """Two-block stages: the stage's downsampling_layer (a norm, then a conv) is as long as its blocks."""
    from transformers import ConvNextV2Config, ConvNextV2ForImageClassification

    cfg = ConvNextV2Config(depths=[2, 2], hidden_sizes=[8, 16], num_stages=2, num_labels=3, image_size=32)
    return ConvNextV2ForImageClassification(cfg)


# (builder, {name prefix: depth}); prefixes are matched on whole segments, longest first.
REAL_MODELS = {
    "bert": (_tiny_bert, {
        "bert.embeddings.": 0,
        "bert.encoder.layer.0.": 1,
        "bert.encoder.layer.1.": 2,
        "bert.pooler.": 3,
        "classifier.": 3,
    }),
    "llama_lora": (_tiny_llama_lora, {
        "base_model.model.model.embed_tokens.": 0,
        "base_model.model.model.layers.0.": 1,
        "base_model.model.model.layers.1.": 2,
        "base_model.model.model.norm.": 3,
        "base_model.model.lm_head.": 3,
    }),
    "t5": (_tiny_t5, {
        "shared.": 0,
        "encoder.block.0.": 1,
        "encoder.block.1.": 2,
        "encoder.final_layer_norm.": 2,  # shares "encoder." with the encoder blocks
        "decoder.block.0.": 3,
        "decoder.block.1.": 4,
        "decoder.final_layer_norm.": 5,  # lm_head is tied to shared: named_parameters() lists it once
    }),
    "swin": (_tiny_swin, {
        "swin.embeddings.": 0,
        "swin.encoder.layers.0.blocks.0.": 1,
        "swin.encoder.layers.0.blocks.1.": 2,
        "swin.encoder.layers.0.downsample.": 2,  # with its own stage's last block
        "swin.encoder.layers.1.blocks.0.": 3,
        "swin.layernorm.": 4,
        "classifier.": 4,
    }),
    "llava": (_tiny_llava, {
        "model.vision_tower.embeddings.": 0,
        "model.vision_tower.pre_layrnorm.": 0,
        "model.vision_tower.encoder.layers.0.": 1,
        "model.vision_tower.encoder.layers.1.": 2,
        "model.vision_tower.post_layernorm.": 2,
        "model.multi_modal_projector.": 3,  # feeds the first language-model block
        "model.language_model.embed_tokens.": 3,
        "model.language_model.layers.0.": 3,
        "model.language_model.layers.1.": 4,
        "model.language_model.norm.": 5,
        "lm_head.": 5,
    }),
    "xlmr_lora": (_tiny_xlmr_lora, {
        "base_model.model.classifier.": 3,  # registered first, runs last
        "base_model.model.roberta.embeddings.": 0,
        "base_model.model.roberta.encoder.layer.0.": 1,
        "base_model.model.roberta.encoder.layer.1.": 2,
    }),
    "camembert_mlm": (_tiny_camembert_mlm, {
        "lm_head.": 3,  # registered first, runs last
        "lm_head.decoder.weight": 0,  # tied to the word embeddings: named_parameters() names it here
        "roberta.embeddings.": 0,
        "roberta.encoder.layer.0.": 1,
        "roberta.encoder.layer.1.": 2,
    }),
    "convnextv2": (_tiny_convnextv2, {
        "convnextv2.embeddings.": 0,
        "convnextv2.encoder.stages.0.layers.0.": 1,
        "convnextv2.encoder.stages.0.layers.1.": 2,
        "convnextv2.encoder.stages.1.downsampling_layer.": 3,  # runs before the stage's first block
        "convnextv2.encoder.stages.1.layers.0.": 3,
        "convnextv2.encoder.stages.1.layers.1.": 4,
        "convnextv2.layernorm.": 5,
        "classifier.": 5,
    }),
    "gpt2": (_tiny_gpt2, {
        "transformer.wte.": 0,
        "transformer.wpe.": 0,
        "transformer.h.0.": 1,
        "transformer.h.1.": 2,
        "transformer.ln_f.": 3,
    }),
    "mixtral": (_tiny_mixtral, {
        "model.embed_tokens.": 0,
        "model.layers.0.": 1,
        "model.layers.1.": 2,
        "model.norm.": 3,
        "lm_head.": 3,
    }),
}


# Where the name-only path differs: heads registered before the body, and a pipeline as long as the blocks
# list next to it, whose elements' classes only a module tells (names alone read it as a parallel list).
NAMES_ONLY = {"xlmr_lora": {"base_model.model.classifier.": 0}, "camembert_mlm": {"lm_head.": 0},
              "convnextv2": {"convnextv2.encoder.stages.1.downsampling_layer.1.": 4}}


def _expected(names: list[str], prefixes: dict[str, int]) -> dict[str, int]:
    out = {}
    for name in names:
        matches = [p for p in prefixes if name.startswith(p)]
        assert matches, f"test table has no prefix for {name}"
        out[name] = prefixes[max(matches, key=len)]
    return out


@pytest.fixture(scope="module", params=sorted(REAL_MODELS))
def real_model(request):
    torch.manual_seed(0)
    build, prefixes = REAL_MODELS[request.param]
    return request.param, build(), prefixes


def test_real_model_depths(real_model):
    key, model, prefixes = real_model
    names = [n for n, _ in model.named_parameters()]
    expected = _expected(names, prefixes)
    assert layer_depths(model) == expected
    # The name-only path must reach the same answer on its own, but for a head registered before the body:
    # names cannot tell it from an embedding (T5's ``shared``), so it is placed by position, at 0.
    by_name = {**prefixes, **NAMES_ONLY.get(key, {})}
    assert layer_depths(names) == _expected(names, by_name)
    # Every prefix in the table is used, so the table cannot silently go stale.
    assert all(any(n.startswith(p) for n in names) for p in prefixes)


@pytest.mark.parametrize(
    ("model_key", "n_blocks"),
    [("bert", 2), ("llama_lora", 2), ("t5", 4), ("swin", 3), ("llava", 4), ("gpt2", 2), ("mixtral", 2)],
)
def test_block_count(model_key, n_blocks):
    build, _ = REAL_MODELS[model_key]
    _, count = layer_depths_with_count(build())
    assert count == n_blocks


def test_peft_lora_leaf_names_share_their_layer_depth():
    depths = layer_depths(_tiny_llama_lora())
    assert depths["base_model.model.model.layers.1.self_attn.q_proj.lora_A.default.weight"] == 2
    assert depths["base_model.model.model.layers.1.self_attn.q_proj.base_layer.weight"] == 2
    assert depths["base_model.model.model.layers.0.self_attn.v_proj.lora_B.default.weight"] == 1


# --- wrapper prefixes --------------------------------------------------------------------------

LLAMA_NAMES = (
    ["model.embed_tokens.weight"]
    + [f"model.layers.{i}.{part}.weight" for i in range(3)
       for part in ("self_attn.q_proj", "self_attn.o_proj", "mlp.down_proj", "input_layernorm")]
    + ["model.norm.weight", "lm_head.weight"]
)
LLAMA_DEPTHS = [0] + [1] * 4 + [2] * 4 + [3] * 4 + [4, 4]


def _fsdp1(name: str) -> str:
    """FSDP1 with an auto-wrap policy: a wrapper at the root and inside every layer."""
    name = re.sub(r"(layers\.\d+)\.", r"\1._fsdp_wrapped_module.", name)
    return "_fsdp_wrapped_module." + name


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda n: "module." + n, id="ddp"),
        pytest.param(lambda n: "_orig_mod." + n, id="compile"),
        pytest.param(lambda n: "module._orig_mod." + n, id="ddp+compile"),
        pytest.param(_fsdp1, id="fsdp1"),
        pytest.param(lambda n: re.sub(r"(layers\.\d+)\.", r"\1._checkpoint_wrapped_module.", n),
                     id="checkpoint"),
        pytest.param(lambda n: "base_model.model." + n, id="peft"),
        pytest.param(lambda n: "module.base_model.model." + n, id="ddp+peft"),
        pytest.param(lambda n: "base_model.model." + n.replace(".weight", ".base_layer.weight"),
                     id="peft-base"),
    ],
)
def test_wrapper_prefixes_change_nothing(wrap):
    names = [wrap(n) for n in LLAMA_NAMES]
    assert [layer_depths(names)[n] for n in names] == LLAMA_DEPTHS


def test_real_torch_wrappers():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    model = _tiny_llama()
    for i, layer in enumerate(model.model.layers):
        model.model.layers[i] = checkpoint_wrapper(layer)
    compiled = torch.compile(model)  # named_parameters gains "_orig_mod.", nothing is compiled yet
    depths = layer_depths(compiled)
    assert depths["_orig_mod.model.embed_tokens.weight"] == 0
    assert depths["_orig_mod.model.layers.1._checkpoint_wrapped_module.mlp.up_proj.weight"] == 2
    assert depths["_orig_mod.lm_head.weight"] == 3


def test_normalize_name():
    assert normalize_name(
        "module._fsdp_wrapped_module.base_model.model.model.layers.0._fsdp_wrapped_module.q_proj.lora_A.default.weight"
    ) == "model.layers.0.q_proj.weight"
    assert normalize_name("base_model.model.embed.lora_embedding_A.default") == "embed.lora_embedding_A"


# --- name lists: structures not covered by the real models -------------------------------------

def _moe_names(moe: str) -> list[str]:
    """A two-layer MoE decoder whose experts are a ModuleList under ``layers.<i>.<moe>experts``."""
    names = ["model.embed_tokens.weight"]
    for i in range(2):
        names += [f"model.layers.{i}.self_attn.q_proj.weight", f"model.layers.{i}.self_attn.o_proj.weight"]
        if moe:
            names.append(f"model.layers.{i}.{moe}gate.weight")
        for e in range(4):
            names += [f"model.layers.{i}.{moe}experts.{e}.{w}.weight" for w in ("w1", "w2", "w3")]
        names += [f"model.layers.{i}.input_layernorm.weight",
                  f"model.layers.{i}.post_attention_layernorm.weight"]
    return names + ["model.norm.weight", "lm_head.weight"]


MOE_DEPTHS = {"model.embed_tokens.": 0, "model.layers.0.": 1, "model.layers.1.": 2, "model.norm.": 3,
              "lm_head.": 3}

NAME_CASES = {
    # Old Mixtral naming: experts are a list inside a block, not blocks.
    "mixtral-experts-list": (_moe_names("block_sparse_moe."), MOE_DEPTHS),
    # Experts directly under the layer (layers.3.experts.7), holding most of the layer's tensors.
    "experts-direct": (_moe_names(""), MOE_DEPTHS),
    # ConvNeXt-style stages: stages.<s>.layers.<b>, with a downsampling Sequential before the blocks.
    "convnext-stages": ([
        "embeddings.patch.weight", "embeddings.norm.weight",
        *[f"encoder.stages.0.layers.{b}.{p}.weight" for b in range(2) for p in ("dwconv", "norm", "pwconv1")],
        "encoder.stages.1.downsampling_layer.0.weight", "encoder.stages.1.downsampling_layer.1.weight",
        *[f"encoder.stages.1.layers.{b}.{p}.weight" for b in range(3) for p in ("dwconv", "norm", "pwconv1")],
        "layernorm.weight", "classifier.weight",
    ], {
        "embeddings.": 0, "encoder.stages.0.layers.0.": 1, "encoder.stages.0.layers.1.": 2,
        "encoder.stages.1.downsampling_layer.": 3,  # feeds stage 1's first block
        "encoder.stages.1.layers.0.": 3, "encoder.stages.1.layers.1.": 4, "encoder.stages.1.layers.2.": 5,
        "layernorm.": 6, "classifier.": 6,
    }),
    # Funnel-style lists of lists: blocks.<stage>.<block>.
    "list-of-lists": ([
        "embeddings.word.weight",
        *[f"encoder.blocks.{s}.{b}.{p}.weight"
          for s in range(2) for b in range(2) for p in ("attn.q", "ffn.w")],
        "head.weight",
    ], {
        "embeddings.": 0, "encoder.blocks.0.0.": 1, "encoder.blocks.0.1.": 2,
        "encoder.blocks.1.0.": 3, "encoder.blocks.1.1.": 4, "head.": 5,
    }),
    # Side lists: a two-layer MLP head and a list of bare position embeddings are not blocks.
    "side-lists": ([
        "embeddings.position_embeddings.0.weight", "embeddings.position_embeddings.1.weight",
        *[f"encoder.layer.{i}.{p}.weight" for i in range(3) for p in ("attention.query", "output.dense")],
        "classifier.layers.0.weight", "classifier.layers.1.weight",
    ], {
        "embeddings.": 0, "encoder.layer.0.": 1, "encoder.layer.1.": 2, "encoder.layer.2.": 3,
        "classifier.": 4,
    }),
    # A model that registers its final norm before its layers: registration order decides.
    "norm-registered-first": ([
        "embed.weight", "norm.weight",
        *[f"layers.{i}.{p}.weight" for i in range(2) for p in ("attn", "mlp")],
        "head.weight",
    ], {"embed.": 0, "norm.": 0, "layers.0.": 1, "layers.1.": 2, "head.": 3}),
    # BART: each stack's layernorm_embedding is registered after its layers and applied to the embeddings
    # before them, so it sits with them: the encoder's at 0, the decoder's at its first block (as its
    # embed_positions, registered before its layers); the head after everything.
    "bart-layernorm-embedding": ([
        "model.shared.weight", "model.encoder.embed_positions.weight",
        *[f"model.encoder.layers.{i}.{p}.weight" for i in range(2) for p in ("self_attn.q_proj", "fc1")],
        "model.encoder.layernorm_embedding.weight",
        "model.decoder.embed_positions.weight",
        *[f"model.decoder.layers.{i}.{p}.weight" for i in range(2) for p in ("self_attn.q_proj", "fc1")],
        "model.decoder.layernorm_embedding.weight",
        "classification_head.dense.weight",
    ], {
        "model.shared.": 0, "model.encoder.embed_positions.": 0, "model.encoder.layers.0.": 1,
        "model.encoder.layers.1.": 2, "model.encoder.layernorm_embedding.": 0,
        "model.decoder.embed_positions.": 3, "model.decoder.layers.0.": 3, "model.decoder.layers.1.": 4,
        "model.decoder.layernorm_embedding.": 3, "classification_head.": 5,
    }),
    # A one-layer model still has one block.
    "one-layer": (["wte.weight", "h.0.attn.weight", "h.0.mlp.weight", "ln_f.weight"], {
        "wte.": 0, "h.0.": 1, "ln_f.": 2,
    }),
}


@pytest.mark.parametrize("case", sorted(NAME_CASES))
def test_name_list_depths(case):
    names, prefixes = NAME_CASES[case]
    assert layer_depths(names) == _expected(names, prefixes)


def test_hundred_blocks_are_numbered_in_index_order():
    names = ["embed.weight"] + [f"layers.{i}.{p}.weight" for i in range(100) for p in ("attn", "mlp")]
    depths = layer_depths([*names, "head.weight"])
    assert depths["layers.0.attn.weight"] == 1
    assert depths["layers.9.mlp.weight"] == 10
    assert depths["layers.10.attn.weight"] == 11  # numeric, not lexicographic, order
    assert depths["layers.99.mlp.weight"] == 100
    assert depths["head.weight"] == 101


# --- pattern override --------------------------------------------------------------------------

GPT2_NAMES = ["transformer.wte.weight", "transformer.h.0.attn.weight", "transformer.h.0.mlp.weight",
              "transformer.h.1.attn.weight", "transformer.h.1.mlp.weight", "transformer.ln_f.weight"]


@pytest.mark.parametrize(
    "pattern",
    [
        pytest.param(r"\.h\.(\d+)\.", id="regex"),
        pytest.param(re.compile(r"\.h\.(\d+)\."), id="compiled"),
        pytest.param(lambda n: int(n.split(".")[2]) if n.startswith("transformer.h.") else None,
                     id="callable"),
    ],
)
def test_pattern_override(pattern):
    assert [layer_depths(GPT2_NAMES, pattern)[n] for n in GPT2_NAMES] == [0, 1, 1, 2, 2, 3]


def test_callable_pattern_on_names_without_integers():
    names = ["stem.weight", "block_a.attn.weight", "block_a.mlp.weight", "block_b.attn.weight", "head.weight"]
    order = {"block_a": 0, "block_b": 1}
    depths = layer_depths(names, lambda n: order.get(n.split(".")[0]))
    assert [depths[n] for n in names] == [0, 1, 1, 2, 3]


def test_regex_pattern_selects_one_stack():
    # Only the decoder is matched: the encoder counts as "before the blocks".
    names = ["enc.layers.0.a.weight", "enc.layers.1.a.weight", "dec.layers.0.a.weight",
             "dec.layers.1.a.weight", "head.weight"]
    depths = layer_depths(names, r"^dec\.layers\.(\d+)\.")
    assert [depths[n] for n in names] == [0, 0, 1, 2, 3]


_XLM_PARTS = (("attentions", "q.weight"), ("layer_norm1", "weight"), ("ffns", "lin.weight"),
              ("layer_norm2", "weight"))
XLM_LIKE_NAMES = (["emb.weight"] + [f"t.{part}.{i}.{leaf}" for i in range(2) for part, leaf in _XLM_PARTS]
                  + ["head.weight"])


@pytest.mark.parametrize("pattern", [r"(?:attentions|ffns|layer_norm1|layer_norm2)\.(\d+)\.",
                                     r"\.(\d+)\."])
def test_a_pattern_over_parallel_lists_reads_them_as_one_stack(pattern):
    depths = layer_depths(XLM_LIKE_NAMES, pattern)
    assert [depths[n] for n in XLM_LIKE_NAMES] == [0] + [1] * 4 + [2] * 4 + [3]


def test_a_pattern_over_two_towers_chains_them():
    # same contents under one parent: two towers; under two parents (encoder, decoder): chained as well
    names = ["emb.weight", "m.text.0.attn.weight", "m.text.0.mlp.weight", "m.text.1.attn.weight",
             "m.text.1.mlp.weight", "m.image.0.attn.weight", "m.image.0.mlp.weight", "m.image.1.attn.weight",
             "m.image.1.mlp.weight", "head.weight"]
    depths = layer_depths(names, r"\.(\d+)\.")
    assert [depths[n] for n in names] == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]


# --- errors --------------------------------------------------------------------------------------

def test_no_stack_found_error_shows_names_and_fix():
    names = ["embed.weight", "encoder.attn.weight", "head.weight"]
    with pytest.raises(ValueError, match="layer_pattern") as info:
        layer_depths(names)
    assert "encoder.attn.weight" in str(info.value)


@pytest.mark.parametrize(
    ("pattern", "skipped"),
    [
        (r"\.layers\.(0)\.", "model.layers.1.attn"),      # one block of the stack
        (r"\.layers\.([0-9])\.", "model.layers.10.attn"),  # one digit: blocks 10 and 11 of 12 left out
        (r"\.layers\.(\d+)\.attn", "model.layers.0.mlp"),  # a part of each block left out
    ],
)
def test_a_pattern_that_skips_blocks_of_its_stack_is_refused(pattern, skipped):
    blocks = [f"model.layers.{i}.{part}" for i in range(12) for part in ("attn", "mlp", "w")]
    names = ["model.embed.weight", *blocks, "lm_head.weight"]
    with pytest.raises(ValueError, match=rf"layer_pattern .* matched blocks of 'model\.layers\.' but not "
                                         rf"'{re.escape(skipped)}', which would sit outside the stack"):
        layer_depths(names, pattern)
    assert max(layer_depths(names, r"\.layers\.(\d+)\.").values()) == 13  # every block: N = 12, head at 13


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (r"\.layers\.(\d+", "not a valid regular expression"),
        (r"\.layers\.\d+\.", "needs exactly one"),
        (r"(\w+)\.(\d+)\.", "needs exactly one"),
        (r"\.(\w+)\.0\.", "not an integer"),
        (r"\.blocks\.(\d+)\.", "matched no parameter name"),
    ],
)
def test_bad_pattern_errors(pattern, message):
    with pytest.raises(ValueError, match="layer_pattern") as info:
        layer_depths(LLAMA_NAMES, pattern)
    assert message in str(info.value)


def test_callable_must_return_int_or_none():
    with pytest.raises(ValueError, match="layer_pattern"):
        layer_depths(GPT2_NAMES, lambda n: "0")


def test_string_instead_of_names_is_rejected():
    with pytest.raises(TypeError):
        layer_depths("model.layers.0.weight")


def test_empty():
    assert layer_depths([]) == {}


# --- issue 13: parallel lists, side lists, stages in parallel lists, declared blocks ------------
# Tiny configs built on the meta device; the expected depths are written from the contract:
# block i of parallel lists is the union of their i-th elements, a side list takes the depth of
# where it sits, a stage's own patch embedding takes its first block's depth.


def _meta(build):
    with torch.device("meta"):
        return build()


def _xlm_like(cls_name: str, config_name: str) -> nn.Module:
    import transformers

    cfg = getattr(transformers, config_name)(vocab_size=50, emb_dim=16, n_layers=2, n_heads=2,
                                             max_position_embeddings=32)
    return _meta(lambda: getattr(transformers, cls_name)(cfg))


XLM_DEPTHS = {
    "transformer.position_embeddings.": 0,
    "transformer.embeddings.": 0,
    "transformer.layer_norm_emb.": 0,
    "transformer.attentions.0.": 1, "transformer.layer_norm1.0.": 1,
    "transformer.ffns.0.": 1, "transformer.layer_norm2.0.": 1,
    "transformer.attentions.1.": 2, "transformer.layer_norm1.1.": 2,
    "transformer.ffns.1.": 2, "transformer.layer_norm2.1.": 2,
    "pred_layer.": 3,
}


def _tiny_pvt() -> nn.Module:
    from transformers import PvtConfig, PvtForImageClassification

    cfg = PvtConfig(image_size=32, num_encoder_blocks=2, depths=[2, 1], sequence_reduction_ratios=[2, 1],
                    hidden_sizes=[8, 16], patch_sizes=[4, 2], strides=[4, 2], num_attention_heads=[1, 2],
                    mlp_ratios=[2, 2], num_labels=3)
    return _meta(lambda: PvtForImageClassification(cfg))


PVT_DEPTHS = {
    "pvt.encoder.patch_embeddings.0.": 1,  # registered before every block: with its stage's first block
    "pvt.encoder.block.0.0.": 1,
    "pvt.encoder.block.0.1.": 2,
    "pvt.encoder.patch_embeddings.1.": 3,
    "pvt.encoder.block.1.0.": 3,
    "pvt.encoder.layer_norm.": 4,
    "classifier.": 4,
}


def _tiny_qwen3_vl(vision_depth: int) -> nn.Module:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    vision = dict(depth=vision_depth, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16,
                  deepstack_visual_indexes=[0, 1], patch_size=4, spatial_merge_size=2, temporal_patch_size=2,
                  num_position_embeddings=16)
    text = dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1, head_dim=8,
                rope_scaling={"rope_type": "default", "mrope_section": [2, 1, 1]})
    config = Qwen3VLConfig(vision_config=vision, text_config=text)
    return _meta(lambda: Qwen3VLForConditionalGeneration(config))


QWEN3_VL_DEPTHS = {
    "model.visual.patch_embed.": 0,
    "model.visual.pos_embed.": 0,
    "model.visual.blocks.0.": 1,
    "model.visual.blocks.1.": 2,
    "model.visual.blocks.2.": 3,
    "model.visual.merger.": 3,
    "model.visual.deepstack_merger_list.": 3,  # a side list: not blocks, where it sits
    "model.language_model.embed_tokens.": 4,
    "model.language_model.layers.0.": 4,
    "model.language_model.layers.1.": 5,
    "model.language_model.norm.": 6,
    "lm_head.": 6,
}

STRUCTURE_MODELS = {
    "xlm": (lambda: _xlm_like("XLMWithLMHeadModel", "XLMConfig"), XLM_DEPTHS, 2),
    "flaubert": (lambda: _xlm_like("FlaubertWithLMHeadModel", "FlaubertConfig"), XLM_DEPTHS, 2),
    "pvt": (_tiny_pvt, PVT_DEPTHS, 3),
    "qwen3_vl": (lambda: _tiny_qwen3_vl(3), QWEN3_VL_DEPTHS, 5),
}


@pytest.mark.parametrize("key", sorted(STRUCTURE_MODELS))
def test_structure_depths_module_and_names_agree(key):
    build, prefixes, n_blocks = STRUCTURE_MODELS[key]
    model = build()
    names = [n for n, _ in model.named_parameters()]
    expected = _expected(names, prefixes)
    assert layer_depths(model) == expected
    assert layer_depths(names) == expected
    assert layer_depths_with_count(model)[1] == n_blocks
    assert all(any(n.startswith(p) for n in names) for p in prefixes)


def test_side_list_as_long_as_the_blocks_is_not_merged_from_the_module():
    # Two vision blocks and two deepstack mergers: equal lengths. The module declares its vision
    # block class a unit (_no_split_modules), so the mergers are neither merged into the blocks nor
    # a stack; names alone cannot tell (this is where the module path knows more).
    model = _tiny_qwen3_vl(2)
    depths = layer_depths(model)
    assert depths["model.visual.blocks.1.attn.qkv.weight"] == 2
    assert depths["model.visual.deepstack_merger_list.0.linear_fc1.weight"] == 2
    assert depths["model.visual.deepstack_merger_list.1.linear_fc1.weight"] == 2
    assert depths["model.language_model.layers.0.mlp.up_proj.weight"] == 3
    assert layer_depths_with_count(model)[1] == 4


class _Declares(nn.Module):
    """A model whose blocks are ``trunk.<i>``; its ``side.<i>`` list would otherwise look like a stack."""

    lpwd_layer_pattern = r"^trunk\.(\d+)\."

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.side = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)) for _ in range(3))
        self.trunk = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)) for _ in range(2))
        self.head = nn.Linear(4, 2)


class _TimmLike(nn.Module):
    """timm's protocol: ``group_matcher(coarse)`` with a ``blocks`` regex."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Linear(4, 4)
        self.stages = nn.ModuleList(
            nn.ModuleDict({"blocks": nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
                                                   for _ in range(2))})
            for _ in range(2)
        )
        self.head = nn.Linear(4, 2)

    def group_matcher(self, coarse: bool = False) -> dict:
        if coarse:
            return {"stem": r"^patch_embed", "blocks": r"^stages\.(\d+)"}
        blocks = [(r"^stages\.(\d+)\.blocks\.(\d+)", None), (r"^head", (99999,))]
        return {"stem": r"^patch_embed", "blocks": blocks}


def test_model_declares_its_blocks():
    model = _Declares()
    depths = layer_depths(model)
    assert depths["stem.weight"] == 0
    assert depths["side.2.0.weight"] == 0  # registered before the first declared block
    assert depths["trunk.0.1.weight"] == 1
    assert depths["trunk.1.0.weight"] == 2
    assert depths["head.weight"] == 3
    # The same names without the module: of two lists under one parent the longer is read as the
    # stack (here the wrong one), which is why a declaration wins over detection.
    assert layer_depths_with_count([n for n, _ in model.named_parameters()])[1] == 3


def test_timm_group_matcher_is_honoured_also_when_wrapped():
    wrapper = nn.Module()
    wrapper.timm_model = _TimmLike()
    depths, n_blocks = layer_depths_with_count(wrapper)
    assert n_blocks == 4
    assert depths["timm_model.patch_embed.weight"] == 0
    assert depths["timm_model.stages.0.blocks.1.0.weight"] == 2
    assert depths["timm_model.stages.1.blocks.0.1.weight"] == 3
    assert depths["timm_model.head.weight"] == 5


def test_layer_pattern_overrides_a_declaration():
    depths, n_blocks = layer_depths_with_count(_Declares(), r"^side\.(\d+)\.")
    assert n_blocks == 3
    assert depths["stem.weight"] == 0
    assert depths["side.0.0.weight"] == 1
    assert depths["side.2.1.weight"] == 3
    assert depths["trunk.0.0.weight"] == 4
    assert depths["head.weight"] == 4


def test_weight_norm_parametrization_is_one_layer():
    names = ["embed.weight"]
    for i in range(2):
        names += [f"layers.{i}.conv.bias", f"layers.{i}.conv.parametrizations.weight.original0",
                  f"layers.{i}.conv.parametrizations.weight.original1", f"layers.{i}.norm.weight"]
    assert normalize_name("layers.0.conv.parametrizations.weight.original1") == "layers.0.conv.weight"
    assert [layer_depths(names)[n] for n in names] == [0, 1, 1, 1, 1, 2, 2, 2, 2]


# --- issue 26: _no_split_modules is a hint, not the definition of a block ----------------------------
# transformers 5.25 added embeddings, heads and decoder layers to the classes it declares; the depths must not
# move with it. Each model below is given 5.25's declaration on the instance, so the test means the same on
# every installed release.


def _tiny_clipseg() -> nn.Module:
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    text = dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                  image_size=32, patch_size=16)
    cfg = CLIPSegConfig(text_config=text, vision_config=vision, projection_dim=8, extract_layers=[1, 2],
                        reduce_dim=8, decoder_num_attention_heads=2, decoder_intermediate_size=16)
    return _meta(lambda: CLIPSegForImageSegmentation(cfg))


CLIPSEG_DEPTHS = {
    "clip.logit_scale": 0,
    "clip.text_model.embeddings.": 0,
    "clip.text_model.encoder.layers.0.": 1,
    "clip.text_model.encoder.layers.1.": 2,
    "clip.text_model.final_layer_norm.": 2,  # closes the text tower
    "clip.vision_model.embeddings.": 3,  # opens the vision tower
    "clip.vision_model.pre_layrnorm.": 3,
    "clip.vision_model.encoder.layers.0.": 3,
    "clip.vision_model.encoder.layers.1.": 4,
    "clip.vision_model.encoder.layers.2.": 5,
    "clip.vision_model.post_layernorm.": 5,
    "clip.visual_projection.": 5,
    "clip.text_projection.": 5,
    "decoder.film_": 6,
    "decoder.transposed_convolution.": 6,
    # reduces.i maps extract layer i's output into decoder layer i: a bare list parallel to the layers
    "decoder.reduces.0.": 6,
    "decoder.reduces.1.": 7,
    "decoder.layers.0.": 6,
    "decoder.layers.1.": 7,
}

# What transformers 5.25 declares (5.24: PVT nothing, CLIPSeg the two layer classes only).
DECLARED_525 = {
    "pvt": (_tiny_pvt, PVT_DEPTHS, 3, ["PvtLayer", "PvtPatchEmbeddings"]),
    "clipseg": (_tiny_clipseg, CLIPSEG_DEPTHS, 7,
                ["CLIPSegTextEmbeddings", "CLIPSegEncoderLayer", "CLIPSegVisionEmbeddings",
                 "CLIPSegDecoderLayer"]),
    # a declared embedding, norm and head class (present once, or not in a list) says nothing
    "bert": (_tiny_bert, REAL_MODELS["bert"][1], 2, ["BertLayer", "BertEmbeddings", "BertPooler", "Linear"]),
}


@pytest.mark.parametrize("key", sorted(DECLARED_525))
@pytest.mark.parametrize("declared", ["none", "5.25"])
def test_declared_embeddings_and_heads_do_not_move_the_depths(key, declared):
    build, prefixes, n_blocks, classes = DECLARED_525[key]
    model = build()
    if declared == "5.25":
        model._no_split_modules = classes
    else:
        for module in model.modules():
            module._no_split_modules = None
    names = [n for n, _ in model.named_parameters()]
    expected = _expected(names, prefixes)
    assert layer_depths_with_count(model) == (expected, n_blocks)
    assert layer_depths(names) == expected


def test_a_declared_block_class_still_beats_an_equal_side_list():
    # Qwen3-VL with as many deepstack mergers as vision blocks: only the declaration tells them apart, and a
    # declaration that also names the patch embedding and the merger's class once keeps saying so.
    model = _tiny_qwen3_vl(2)
    model._no_split_modules = ["Qwen3VLVisionBlock", "Qwen3VLTextDecoderLayer", "Qwen3VLVisionPatchEmbed"]
    depths, n_blocks = layer_depths_with_count(model)
    assert n_blocks == 4
    assert depths["model.visual.deepstack_merger_list.0.linear_fc1.weight"] == 2
    assert depths["model.visual.deepstack_merger_list.1.linear_fc1.weight"] == 2
    assert depths["model.language_model.layers.0.mlp.up_proj.weight"] == 3


def test_a_models_depths_are_parsed_once_while_its_names_stay(monkeypatch) -> None:
    """The recipe's check and the Trainer's build share one parse; a changed model (an adapter) is parsed
    again."""
    import hf_lpwd.model.layers as layers_module

    calls: list[int] = []
    parse = layers_module._parse_depths
    monkeypatch.setattr(layers_module, "_parse_depths", lambda m, p: calls.append(1) or parse(m, p))
    model = tiny_llama(layers=2)
    first = layer_depths_with_count(model, None)
    first[0]["lm_head.weight"] = -1  # a caller's change does not reach the cache
    again = layer_depths_with_count(model, None)
    assert len(calls) == 1 and again[0]["lm_head.weight"] == 3 and again[1] == 2
    model.model.layers[0].mlp.extra = torch.nn.Linear(2, 2)  # new parameter names: parsed again
    assert layer_depths_with_count(model, None)[0]["model.layers.0.mlp.extra.weight"] == 1 and len(calls) == 2
