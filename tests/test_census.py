"""The layer census (``benchmarks/layer_census.py``) on a sample of architectures, and its oracle's own rules.

The census builds each model on the meta device from its default config and checks ``layer_depths`` -- from
the module and from the names alone -- against an oracle read from module structure.  The full run (every
architecture of the task mappings, minutes) is a benchmark; this sample covers each shape the contract names:
one stack (BERT, GPT-2, Llama, ViT), MoE experts inside blocks (Mixtral, Qwen3-MoE), parallel lists (XLM),
one-layer stacks (Canine), two chained stacks with a norm between (T5, BART), stages (Swin, ConvNeXt, PVT,
MobileViT), and multi-tower VLMs with projectors, mergers and side lists between the towers (LLaVA, Qwen2-VL,
Qwen3-VL, Janus, Qwen3-Omni's thinker: audio, vision and text towers), and the architectures whose
``_no_split_modules`` names embeddings and heads as well as blocks since transformers 5.25 (PVT, GLPN, BEiT,
SAM, CLIPSeg's decoder ...).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.tiny import ROOT


def _load_census():
    spec = importlib.util.spec_from_file_location("layer_census", ROOT / "benchmarks" / "layer_census.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["layer_census"] = module
    spec.loader.exec_module(module)
    return module


census = _load_census()

SAMPLE = {
    ("causal_lm", "gpt2"), ("causal_lm", "llama"), ("causal_lm", "mixtral"), ("causal_lm", "qwen3_moe"),
    ("causal_lm", "xlm"), ("sequence_classification", "bert"), ("sequence_classification", "canine"),
    # heads registered before the body: they run last, at N+1 (only a module can tell)
    ("sequence_classification", "xlm-roberta"), ("masked_lm", "camembert"),
    ("seq2seq_lm", "t5"), ("seq2seq_lm", "bart"), ("image_classification", "vit"),
    ("image_classification", "swin"), ("image_classification", "convnext"), ("image_classification", "pvt"),
    ("image_classification", "mobilevit"),
    ("image_text_to_text", "llava"), ("image_text_to_text", "qwen2_vl"), ("image_text_to_text", "qwen3_vl"),
    ("image_text_to_text", "janus"), ("image_text_to_text", "qwen3_omni_moe_thinker"),
    # transformers 5.25 declares more than blocks in _no_split_modules for these (issue 26): patch embeddings,
    # decode heads, ASPP necks, decoder layers, mask decoders
    ("image_classification", "beit"),
    ("semantic_segmentation", "data2vec-vision"), ("image_classification", "mobilenet_v2"),
    ("semantic_segmentation", "mobilenet_v2"), ("semantic_segmentation", "mobilevitv2"),
    ("depth_estimation", "glpn"), ("mask_generation", "sam"), ("mask_generation", "sam_hq"),
    ("heads", "clipseg"), ("heads", "blip_text_model"),
}
TARGETS = sorted(t for t in census.iter_targets(list(census.TASKS), {m for _, m in SAMPLE})
                 if t[:2] in SAMPLE)


def test_the_sample_is_in_transformers_mappings() -> None:
    assert {t[:2] for t in TARGETS} == SAMPLE


_BUILT: dict[tuple[str, str], object] = {}


def built(model_type: str, cls_name: str):
    key = (model_type, cls_name)
    if key not in _BUILT:
        _BUILT[key] = census.build(model_type, cls_name, timeout=60)
    return _BUILT[key]


@pytest.mark.parametrize("task,model_type,cls_name", TARGETS, ids=[f"{t}-{m}" for t, m, _ in TARGETS])
def test_census_passes_on_the_sample(task: str, model_type: str, cls_name: str) -> None:
    outcome = census.evaluate(task, model_type, cls_name, built(model_type, cls_name))
    assert (outcome.status, outcome.reason) == ("pass", ""), outcome
    assert outcome.module_ok and outcome.names_ok and outcome.agree
    assert outcome.n_blocks >= 2


@pytest.mark.parametrize(
    "model_type,cls_name,side_list,n_blocks",
    [
        # three deepstack mergers next to 27 vision blocks (Qwen3-VL: + 32 text blocks)
        ("qwen3_vl", "Qwen3VLForConditionalGeneration", "deepstack_merger_list", 27 + 32),
        # the same mergers, registered before the vision blocks, behind a pre-norm of the merger's input width
        # (LayerNorm(4608), then 4608 → 3584): 32 audio + 27 vision + 28 text blocks
        ("qwen3_omni_moe_thinker", "Qwen3OmniMoeThinkerForConditionalGeneration", "merger_list",
         32 + 27 + 28),
    ],
)
def test_oracle_reads_merger_lists_as_side_lists(model_type: str, cls_name: str, side_list: str,
                                                 n_blocks: int) -> None:
    """Mergers each map one block's output to the text width: their outputs never feed the next merger."""
    oracle = built(model_type, cls_name).oracle
    assert len(oracle.blocks) == n_blocks
    assert not [name for block in oracle.blocks for name in block if f".{side_list}." in name]


# -------------------------------------------------------------------------- the oracle's rule between blocks
def _between(model_type: str, cls_name: str) -> tuple[object, dict[str, int]]:
    b = built(model_type, cls_name)
    assert isinstance(b.module_depths, dict), b.module_depths
    return b, dict(b.module_depths)


@pytest.mark.parametrize(
    "model_type,cls_name,name,wrong",
    [
        # T5: the encoder's final norm follows the last encoder block (depth 6 of 12), not the first decoder
        # block
        ("t5", "T5ForConditionalGeneration", "encoder.final_layer_norm.weight", 7),
        # LLaVA (24 vision + 32 text blocks): the text embeddings precede the first text block (25), they are
        # not the vision tower's last (24) and not anywhere in the towers
        ("llava", "LlavaForConditionalGeneration", "model.language_model.embed_tokens.weight", 24),
        ("llava", "LlavaForConditionalGeneration", "model.language_model.embed_tokens.weight", 3),
        # LLaVA's projector sits between the towers: 24 or 25, not inside the text stack
        ("llava", "LlavaForConditionalGeneration", "model.multi_modal_projector.linear_1.weight", 30),
        # Qwen2-VL's merger closes the vision tower (32 blocks)
        ("qwen2_vl", "Qwen2VLForConditionalGeneration", "model.visual.merger.mlp.0.weight", 33),
        ("qwen2_vl", "Qwen2VLForConditionalGeneration", "model.visual.merger.mlp.0.weight", 1),
    ],
)
def test_oracle_refuses_a_wrong_depth_between_blocks(model_type: str, cls_name: str, name: str,
                                                      wrong: int) -> None:
    b, depths = _between(model_type, cls_name)
    assert census.check_contract(b.names, depths, b.oracle) == ""
    depths[name] = wrong
    reason = census.check_contract(b.names, depths, b.oracle)
    assert reason.startswith(f"C7: {name} sits between oracle blocks"), reason


@pytest.mark.parametrize("name,wrong", [
    ("model.encoder.layernorm_embedding.weight", 12),  # registration order: the last encoder block
    ("model.decoder.layernorm_embedding.weight", 25),  # registration order: N+1
    ("model.decoder.layernorm_embedding.weight", 0),   # the encoder's embeddings, not the decoder's
])
def test_oracle_puts_an_embedding_norm_with_its_stacks_embeddings(name: str, wrong: int) -> None:
    """BART (12 + 12 blocks) registers each stack's ``layernorm_embedding`` after its layers and applies it
    to the embeddings before them: the encoder's at 0, the decoder's at its first block (13)."""
    b, depths = _between("bart", "BartForConditionalGeneration")
    assert census.check_contract(b.names, depths, b.oracle) == ""
    assert (depths["model.encoder.layernorm_embedding.weight"],
            depths["model.decoder.layernorm_embedding.weight"]) == (0, 13)
    depths[name] = wrong
    reason = census.check_contract(b.names, depths, b.oracle)
    assert reason.startswith(f"C7: {name} (an embedding norm after its blocks)"), reason


@pytest.mark.parametrize(
    "model_type,cls_name,name,right",
    [
        ("t5", "T5ForConditionalGeneration", "encoder.final_layer_norm.weight", 6),
        ("llava", "LlavaForConditionalGeneration", "model.language_model.embed_tokens.weight", 25),
        ("llava", "LlavaForConditionalGeneration", "model.multi_modal_projector.linear_1.weight", 24),
        ("llava", "LlavaForConditionalGeneration", "model.multi_modal_projector.linear_1.weight", 25),
        ("qwen2_vl", "Qwen2VLForConditionalGeneration", "model.visual.merger.mlp.0.weight", 32),
    ],
)
def test_oracle_accepts_the_depths_the_contract_allows(model_type: str, cls_name: str, name: str,
                                                       right: int) -> None:
    b, depths = _between(model_type, cls_name)
    depths[name] = right
    assert census.check_contract(b.names, depths, b.oracle) == ""


def test_census_script_writes_its_report(tmp_path: Path, capsys) -> None:
    out = tmp_path / "census.md"
    argv = ["--models", "t5,llava", "--tasks", "seq2seq_lm,image_text_to_text", "--out", str(out)]
    assert census.main(argv) == 0
    report = out.read_text()
    assert "- (task, architecture) pairs tried: 2" in report
    assert "- **module path: 2 / 2 = 100.0%**" in report and "- **name path: 2 / 2 = 100.0%**" in report
    assert "## Failures\n\nNone." in report
