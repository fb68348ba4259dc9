"""The grown corpus (models/families/): exact recognition counts against the torch modules,
and every recognised family quantizes with W8/A8, --pts --lis and --target trt through the
fidelity gate. Families recognition does not cover yet refuse --pts --lis by name."""

from __future__ import annotations

import importlib.util
import os
from collections import Counter

import onnx
import pytest

import onnxvq
from onnxvq.core.config import QuantConfig
from onnxvq.core.errors import FidelityError, UnsupportedModelError
from onnxvq.models.families import FAMILIES, ensure

_HAVE_TORCH = all(importlib.util.find_spec(m) for m in ("torch", "timm"))
needs_torch = pytest.mark.skipif(not _HAVE_TORCH, reason="needs torch and timm ([export] extra)")
# partly recognised families (`found`) quantize through the gate as the supported ones do
SUPPORTED = [n for n, f in FAMILIES.items() if f.unsupported is None or f.found is not None]
# CI runs the representative subset (ci tag); benchmarks/run_families.py runs all of them.
_FULL = pytest.mark.skipif(not os.environ.get("ONNXVQ_FULL_CORPUS"), reason="outside CI's "
                           "representative subset; benchmarks/run_families.sh runs every family")
CI = [pytest.param(n, marks=() if "ci" in FAMILIES[n].tags else _FULL) for n in SUPPORTED]
NOISE = dict(calib_size=6, batch_size=2)
# Gate SQNR floors (dB) where this file pins a family's figure: measured on 6 noise samples
# (README's supported-exports table), less ~3 dB. Unlisted: the gate's own check, > 1 dB.
FLOORS = {("swinv2_tiny", "w8a8"): 31, ("swinv2_tiny", "pts-lis"): 26, ("swinv2_tiny", "trt"): 30,
          ("tv_swin_v2_t", "w8a8"): 33, ("tv_swin_v2_t", "pts-lis"): 25,
          ("tv_swin_v2_t", "trt"): 30, ("eva02_tiny", "w8a8"): 39, ("eva02_tiny", "trt"): 39,
          ("levit_128s", "w8a8"): 38, ("levit_128s", "pts-lis"): 26, ("levit_128s", "trt"): 37,
          ("cait_xxs", "w8a8"): 38, ("cait_xxs", "pts-lis"): 38, ("cait_xxs", "trt"): 37}
FLOORS |= {("vit_qknorm", "w8a8"): 26, ("vit_qknorm", "pts-lis"): 9, ("vit_qknorm", "trt"): 23,
           ("clip_b16", "w8a8"): 37, ("clip_b16", "trt"): 37,
           ("siglip_b16", "w8a8"): 33, ("siglip_b16", "pts-lis"): 17, ("siglip_b16", "trt"): 32,
           ("xcit_nano", "w8a8"): 34, ("xcit_nano", "pts-lis"): 14, ("xcit_nano", "trt"): 33,
           ("swinv2_cr_tiny", "w8a8"): 32, ("swinv2_cr_tiny", "pts-lis"): 25,
           ("swinv2_cr_tiny", "trt"): 31, ("hiera_tiny", "w8a8"): 31,
           ("hiera_tiny", "pts-lis"): 29, ("hiera_tiny", "trt"): 31,
           ("tiny_vit_5m", "w8a8"): 30, ("tiny_vit_5m", "pts-lis"): 13, ("tiny_vit_5m", "trt"): 30,
           ("hf_clip_vision", "w8a8"): 37, ("hf_clip_vision", "pts-lis"): 18,
           ("hf_clip_vision", "trt"): 35, ("hf_siglip_vision", "w8a8"): 26,
           ("hf_siglip_vision", "pts-lis"): 16, ("hf_siglip_vision", "trt"): 28,
           ("hf_beit", "w8a8"): 35, ("hf_beit", "trt"): 32, ("hf_data2vec_vision", "w8a8"): 33,
           ("hf_data2vec_vision", "pts-lis"): 14, ("hf_data2vec_vision", "trt"): 33,
           ("tv_maxvit", "w8a8"): 26, ("tv_maxvit", "pts-lis"): 9, ("tv_maxvit", "trt"): 27,
           ("maxvit_tiny", "w8a8"): 30, ("maxvit_tiny", "pts-lis"): 16, ("maxvit_tiny", "trt"): 29}
FLOORS |= {("pvt_v2_b0", "w8a8"): 30, ("pvt_v2_b0", "pts-lis"): 26, ("pvt_v2_b0", "trt"): 30,
           ("convit_tiny", "w8a8"): 28, ("convit_tiny", "pts-lis"): 9, ("convit_tiny", "trt"): 26}
FLOORS |= {("beit3", "w8a8"): 27, ("beit3", "pts-lis"): 15, ("beit3", "trt"): 30,
           ("aimv2", "w8a8"): 37, ("aimv2", "pts-lis"): 37, ("aimv2", "trt"): 37}
FLOORS |= {("tnt_small", "w8a8"): 29, ("tnt_small", "trt"): 27,
           ("efficientformer_l1", "w8a8"): 35, ("efficientformer_l1", "pts-lis"): 31,
           ("efficientformer_l1", "trt"): 35, ("maxxvit_rmlp_nano", "w8a8"): 37,
           ("maxxvit_rmlp_nano", "pts-lis"): 37, ("maxxvit_rmlp_nano", "trt"): 36,
           ("hf_yolos", "w8a8"): 33, ("hf_yolos", "pts-lis"): 16, ("hf_yolos", "trt"): 31,
           ("hf_segformer", "w8a8"): 28, ("hf_segformer", "pts-lis"): 19,
           ("hf_segformer", "trt"): 31, ("hf_levit", "w8a8"): 41, ("hf_levit", "pts-lis"): 30,
           ("hf_levit", "trt"): 39, ("hf_ijepa", "w8a8"): 36, ("hf_ijepa", "pts-lis"): 32,
           ("hf_ijepa", "trt"): 35, ("hf_vit_msn", "w8a8"): 30, ("hf_vit_msn", "pts-lis"): 13,
           ("hf_vit_msn", "trt"): 28, ("hf_owlvit_vision", "w8a8"): 37,
           ("hf_owlvit_vision", "trt"): 34, ("hf_owlv2_vision", "w8a8"): 37,
           ("hf_owlv2_vision", "pts-lis"): 18, ("hf_owlv2_vision", "trt"): 35,
           ("nest_tiny", "w8a8"): 33, ("nest_tiny", "pts-lis"): 27, ("nest_tiny", "trt"): 33,
           ("nextvit_small", "w8a8"): 36, ("nextvit_small", "pts-lis"): 21,
           ("nextvit_small", "trt"): 36, ("hf_cvt", "w8a8"): 29, ("hf_cvt", "trt"): 26,
           ("caformer_s18", "w8a8"): 25, ("caformer_s18", "pts-lis"): 8,
           ("caformer_s18", "trt"): 24}
# session 8's sweep (models/families/sweep.py), CI's two
FLOORS |= {("deit_tiny_ts18_static1", "w8a8"): 27, ("deit_tiny_ts18_static1", "pts-lis"): 9,
           ("deit_tiny_ts18_static1", "trt"): 26, ("hf_donut_swin", "w8a8"): 32,
           ("hf_donut_swin", "pts-lis"): 25, ("hf_donut_swin", "trt"): 32}
FLOORS |= {("swinv2_tiny_dynamo", k): v for (n, k), v in FLOORS.items() if n == "swinv2_tiny"}
FLOORS |= {("vit_qknorm_dynamo", k): v for (n, k), v in FLOORS.items() if n == "vit_qknorm"}
# --pts --lis on 6 samples: the gate names the final LayerNorm (tests below say why). DeiT-III's
# and CaiT's final norms are refused per flag at calibration instead (their pooled class token).
# CLIP's norm_pre (before the blocks: the class token's row is the same for every image) too.
# Hugging Face BEiT's pooler norm (the mean-pooled [B, 192] vector, as EVA-02's) too.
# TNT-S: the first block's outer MLP norm (9.3 dB against W8/A8's 32.3); OWL-ViT's pre_layernorm
# (16.9 dB: as CLIP's norm_pre); HF CvT's last-stage MLP norm (10.3 dB against 33.6).
GATE_CATCHES = {"eva02_tiny": "'node_layer_norm_4'", "clip_b16": "'/norm_pre/LayerNormalization'",
                "hf_beit": "'/model/beit/pooler/layernorm/LayerNormalization'",
                "tnt_small": "'/blocks.0/norm_mlp/LayerNormalization'",
                "hf_owlvit_vision": "'/model/vision_model/pre_layernorm/LayerNormalization'",
                "hf_cvt": "'/model/cvt/encoder/stages.2/layers.0/layernorm_after/"
                          "LayerNormalization'",
                "vit_clip_quickgelu": "'/norm_pre/LayerNormalization'"}  # as clip_b16's
# On the gate's edge (measured 19.4 and 19.9 dB below W8/A8, the gate's limit is 20): either
# above the floor or refused with a named culprit; both are right, a silent bad model is not.
GATE_EDGE = {"hf_clip_vision", "hf_data2vec_vision", "hf_owlv2_vision"}
# the RoPE ViTs and NaFlexViT: 18.7-20.9 dB below (W8/A8 at 35-77 dB)
GATE_EDGE |= {"rope_vit", "rope_mixed", "rope_reg1_gap", "naflexvit"}
UNSUPPORTED = [pytest.param(n, marks=() if "ci" in f.tags else _FULL)
               for n, f in FAMILIES.items() if f.unsupported is not None and f.found is None]
OTHER_SOFTMAX = {"fastvit_sa12": 0, "convit_tiny": 2, "gcvit_xxtiny": 6, "efficientformer_l1": 0,
                 "maxxvit_rmlp_nano": 0, "nextvit_small": 0, "caformer_s18": 0}
PARTIAL = [pytest.param(n, marks=() if "ci" in f.tags else _FULL)
           for n, f in FAMILIES.items() if f.found is not None]


@pytest.fixture(scope="module")
def exported():
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = ensure(FAMILIES[name])
        return cache[name]

    return get


# a dynamo entry's torch module is its TorchScript twin's (same arch and sizes), counted there;
# the dynamo-only ones (EVA, DINOv3, AIMv2, ...) are counted themselves
_TWINS = {(f.arch, repr(f.kwargs)) for f in FAMILIES.values()
          if not f.exporter.startswith("dynamo")}
_COUNTED = [n for n, f in FAMILIES.items() if not f.external and (
    not f.exporter.startswith("dynamo") or (f.arch, repr(f.kwargs)) not in _TWINS)]


@pytest.mark.corpus
@needs_torch
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow if "big" in f.tags else ())
                                  for n, f in FAMILIES.items() if n in _COUNTED])
def test_counts_are_the_torch_modules(name):
    from onnxvq.models.family_modules import build, family_counts

    assert family_counts(build(FAMILIES[name])) == FAMILIES[name].counts


@pytest.mark.corpus
@pytest.mark.slow
@needs_torch
@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items()
                                  if f.exporter.removeprefix("dynamo").isdigit()])
def test_dynamo_families_export_at_the_opset_they_ask_for(exported, name):
    model = onnx.load(str(exported(name)), load_external_data=False)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset == int(FAMILIES[name].exporter.removeprefix("dynamo"))


@pytest.mark.corpus
@pytest.mark.slow
@needs_torch
@pytest.mark.parametrize("name", SUPPORTED)
def test_inspect_finds_exact_counts(exported, name):
    family = FAMILIES[name]
    result = onnxvq.inspect(exported(name))
    assert result.structure.counts == (family.found or family.counts).as_dict()
    summary = result.structure.summary()
    assert len(summary["head"]) == family.heads
    assert summary["heads"] and summary["heads"] > 0  # attention heads found (BEiT: was null)
    # MobileViT's block convs are not patch embeddings; LeViT's stem is a chain of four convs
    assert len(summary["patch_embed"]) == family.patch_convs


@pytest.mark.corpus
@pytest.mark.slow
@needs_torch
@pytest.mark.parametrize("name", CI)
@pytest.mark.parametrize("flags", [{}, {"pts": True, "lis": True}, {"target": "trt"}],
                         ids=["w8a8", "pts-lis", "trt"])
def test_quantizes_through_the_gate(exported, name, flags):
    if name in GATE_CATCHES and flags.get("pts"):
        with pytest.raises(FidelityError, match=GATE_CATCHES[name]):
            onnxvq.quantize(exported(name), None, QuantConfig(**NOISE, **flags))
        return
    try:
        result = onnxvq.quantize(exported(name), None, QuantConfig(**NOISE, **flags))
    except FidelityError as exc:
        if name in GATE_EDGE and flags.get("pts"):
            assert "likely culprit: node '" in str(exc)
            return
        raise
    (out,) = result.fidelity["outputs"]
    key = "trt" if flags.get("target") else "pts-lis" if flags else "w8a8"
    assert out["problem"] is None and out["sqnr_db"] > FLOORS.get((name, key), 1.0)
    if FAMILIES[name].dynamic_hw:  # folded at 224, the input stays symbolic
        dims = result.model.graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_param for d in dims[2:]] == ["height", "width"]
    if FAMILIES[name].external:  # the weights were read from the .data file beside it
        path = exported(name)
        assert path.with_name(path.name + ".data").stat().st_size > 4e6  # 5.1 MB of weights
        inits = onnx.load(str(path), load_external_data=False).graph.initializer
        assert sum(i.data_location == onnx.TensorProto.EXTERNAL for i in inits) >= 12


@pytest.mark.corpus
@pytest.mark.slow
@needs_torch
def test_levit_batchnorm_attention_quantizes_and_pts_is_refused(exported):
    """LeViT: Linear+BatchNorm projections (folded into the linears), an attention bias,
    Hardswish before the output projection, no LayerNorm. Before, nothing was recognised and
    --pts --lis wrote plain W8/A8. Now every linear and both attention products are int8, LIS
    replaces all 11 softmaxes (the biased scores are a float input it quantizes itself), and
    --pts alone is refused by name (--pts --lis warns that --pts did nothing: the gate test)."""
    path = exported("levit_128s")
    with pytest.raises(UnsupportedModelError, match="--pts cannot apply: the model has no "
                       "LayerNormalization"):
        onnxvq.quantize(path, None, QuantConfig(pts=True, **NOISE))
    sqnr = {}
    for key, flags in (("w8a8", {}), ("lis", {"lis": True})):
        result = onnxvq.quantize(path, None, QuantConfig(**NOISE, **flags))
        ops = Counter(n.op_type for n in result.model.graph.node)
        # every block linear (the heads stay float); QuantizedLinear where this CPU has AMX;
        # with --lis the 11 biased Q·Kᵀ too (ort-mixed-qmatmul keeps them integer under the Add)
        amx = sum(v for k, v in ops.items() if k.startswith("QuantizedLinear"))
        assert ops["MatMulIntegerToFloat"] + amx == 46 + (11 if flags else 0)
        assert ops["BatchNormalization"] == 2  # the heads' BatchNorm -> Linear, kept float
        assert ops["LogIntSoftmax"] == (11 if flags else 0)
        sqnr[key] = result.fidelity["outputs"][0]["sqnr_db"]
    assert sqnr["w8a8"] > 35 and sqnr["lis"] > 25  # measured 41.7 / 29.6 dB


@pytest.mark.corpus
@pytest.mark.slow
@needs_torch
@pytest.mark.parametrize("name, floor", [("swinv2_tiny", 30), ("tv_swin_v2_t", 25),
                                         pytest.param("swinv2_tiny_dynamo", 30, marks=_FULL)])
def test_swinv2_cosine_attention_takes_lis(exported, name, floor):
    """Cosine attention (L2-normalised q and k, per-head exp(logit scale), rel-pos bias, the
    shifted windows' -100 mask): every Softmax becomes LogIntSoftmax on the quantized
    scale-and-bias scores (the masked ones coded int32), timm's (TorchScript and dynamo) and
    torchvision's Swin-v2 alike. Measured on 6 noise samples: 33.4 dB (timm, both exporters) and
    28.3 dB (torchvision) against W8/A8's 34.1 and 36.9. Before: no attention found, --lis did
    nothing."""
    result = onnxvq.quantize(exported(name), None, QuantConfig(lis=True, **NOISE))
    ops = Counter(n.op_type for n in result.model.graph.node)
    assert ops["LogIntSoftmax"] == ops["LogIntMatMul"] == 5 and ops["Softmax"] == 0
    assert {b.placement for b in result.structure.blocks} == {"res-post-norm"}
    assert result.fidelity["outputs"][0]["sqnr_db"] > floor


@pytest.mark.corpus
@pytest.mark.slow
@needs_torch
def test_cait_talking_heads_and_class_attention_quantize(exported):
    """CaiT: talking heads (Linears over the heads before and after the Softmax), class attention
    (only the class token queries), layer-scale. Before, 2 of 4 attentions were found. W8/A8:
    every linear, the four head-mixing ones too, and both attention products of all four
    attentions. --lis: the class-attention Softmaxes only; a talking-heads Softmax is refused by
    name (its probabilities are mixed by a Linear before A·V, and LogIntMatMul takes log codes),
    keeping A·V's W8/A8 Q/DQ. --pts: 8 of 9 norms; the final one, whose class token the head
    reads, keeps float (11.7 dB through PTS's input codes; it used to fail the gate by ~29 dB)."""
    path = exported("cait_xxs")
    w8 = onnxvq.quantize(path, None, QuantConfig(**NOISE))
    weights = {w.node for w in w8.plan.weights}
    mixing = {n for a in w8.structure.attentions for n in a.head_mixing}
    assert len(mixing) == 4 and mixing <= weights
    sites = {c for s in w8.plan.activations if s.role in ("scores", "probs") for c in s.consumers}
    assert sites == {m for a in w8.structure.attentions
                     for m in (a.scores_matmul, a.context_matmul)}  # 8 attention products
    result = onnxvq.quantize(path, None, QuantConfig(pts=True, lis=True, **NOISE))
    ops = Counter(n.op_type for n in result.model.graph.node)
    assert ops["IntLayerNorm"] + ops["AddIntLayerNorm"] == 8 and ops["LayerNormalization"] == 1
    assert ops["LogIntSoftmax"] == ops["LogIntMatMul"] == 2 and ops["Softmax"] == 2
    refused = {r["node"]: r["reason"] for r in result.refusals}
    assert "token 0, which the head reads, keeps only" in refused["/norm/LayerNormalization"]
    skipped = dict(result.plan.skipped)  # placement asked replace-softmax before planning
    for block in (0, 1):
        assert skipped[f"/blocks/blocks.{block}/attn/Softmax"] == (
            "Softmax output reaches A·V through other ops or has other consumers")
    sqnr = result.fidelity["outputs"][0]["sqnr_db"]
    assert w8.fidelity["outputs"][0]["sqnr_db"] > 38 and sqnr > 38  # measured 41.3 / 41.0 dB


@pytest.mark.corpus
@pytest.mark.slow
@needs_torch
def test_pts_on_dinov2_registers_is_refused_not_written_constant(exported):
    """Before: --pts wrote a model whose output was the same for every image, exit 0."""
    with pytest.raises(UnsupportedModelError, match="--pts cannot apply: all 5 "
                       "LayerNormalization nodes refused: PTS: the narrowest token spans"):
        onnxvq.quantize(exported("dinov2_reg4"), None, QuantConfig(pts=True, **NOISE))


@pytest.mark.corpus
@pytest.mark.slow
@needs_torch
def test_eva02_quantizes_w8a8_and_its_final_norm_is_caught_by_the_gate(exported):
    """EVA-02 (dynamo; rotary q/k, SwiGLU MLP): W8/A8, --target trt and --lis pass the gate with
    the gate product act(x₁)·x₂ quantized on both inputs; with --pts --lis, on 6 samples, the final
    LayerNorm's IntLayerNorm (19 dB against 43 dB for W8/A8) is named by the gate, nothing
    written. Its input is the pooled [B, 192] vector: one value per image per channel, so the
    per-channel PTS shifts fitted on 6 images clip unseen ones. On 64 images it passes."""
    for flags in ({}, {"target": "trt"}, {"lis": True}):
        result = onnxvq.quantize(exported("eva02_tiny"), None, QuantConfig(**NOISE, **flags))
        assert result.fidelity["outputs"][0]["sqnr_db"] > 39  # measured 42.8 / 42.7 / 42.6
        gates = [s for s in result.plan.activations if s.role == "gate"]
        assert len(gates) == 4  # two inputs of each block's gate Mul
        ops = Counter(n.op_type for n in result.model.graph.node)
        assert ops["LogIntSoftmax"] == (2 if flags.get("lis") else 0)
    with pytest.raises(FidelityError, match="below the W8/A8 variant.*'node_layer_norm_4'"):
        onnxvq.quantize(exported("eva02_tiny"), None, QuantConfig(pts=True, lis=True, **NOISE))
    result = onnxvq.quantize(exported("eva02_tiny"), None,
                             QuantConfig(pts=True, lis=True, calib_size=64, batch_size=8))
    ops = Counter(n.op_type for n in result.model.graph.node)
    assert ops["IntLayerNorm"] + ops["AddIntLayerNorm"] == 5 and ops["LogIntSoftmax"] == 2
    assert result.fidelity["outputs"][0]["sqnr_db"] > 30  # measured 34.4 (W8/A8 38.3)


@pytest.mark.corpus
@pytest.mark.slow
@needs_torch
@pytest.mark.parametrize("name", UNSUPPORTED)
def test_unsupported_families_refuse_lis_by_name(exported, name):
    """Families whose attention recognition does not cover (`unsupported` says why): no attention
    is reported, --lis is refused by name (exit 4, nothing written) instead of writing W8/A8."""
    path = exported(name)
    counts = onnxvq.inspect(path).structure.counts
    assert counts["attentions"] == counts["blocks"] == 0
    with pytest.raises(UnsupportedModelError, match="--lis cannot apply: the model has no "
                       "attention Softmax onnxvq recognises"):
        onnxvq.quantize(path, None, QuantConfig(lis=True, **NOISE))


@pytest.mark.corpus
@pytest.mark.slow
@needs_torch
@pytest.mark.parametrize("name", PARTIAL)
def test_partly_recognised_families_say_what_lis_leaves_float(exported, name, caplog):
    """Families recognition covers in part (`found`, fewer than torch's attentions; `unsupported`
    says what it misses): --lis replaces the Softmaxes of the attentions it finds and warns, by
    name, about the ones it leaves float, instead of writing them silently."""
    family = FAMILIES[name]
    structure = onnxvq.inspect(exported(name)).structure
    missed = OTHER_SOFTMAX[name]  # ConViT's GPSA has two (patch and positional scores)
    assert len(structure.other_softmax) == missed
    with caplog.at_level("WARNING", logger="onnxvq.quantizer.flags"):
        result = onnxvq.quantize(exported(name), None, QuantConfig(lis=True, **NOISE))
    ops = Counter(n.op_type for n in result.model.graph.node)
    replaced = ops["LogIntSoftmax"] + ops["LogIntAttention"]
    assert replaced == family.found.attentions
    if missed:
        assert f"--lis left {missed} Softmax node(s) float" in caplog.text
