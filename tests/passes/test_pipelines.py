"""The declared pipelines: canonicalisation of tiny ViTs built in code (numerically neutral,
exact counts) and of a real export; which quantization pipeline each setting picks."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

from onnxvq.core.config import QuantConfig
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.passes import pipelines
from onnxvq.passes.pipelines import canonicalize


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


@pytest.mark.parametrize("opset", [13, 16, 17])
def test_decomposed_layernorm_fuses_to_one_node(opset):
    cfg = TinyViTConfig(depth=2, layernorm="decomposed", opset=opset)
    model = build_tiny_vit(cfg)
    assert ops(model)["LayerNormalization"] == 0
    out, report = canonicalize(model)
    assert report.result("fuse-layernorm").applied == 2 * cfg.depth + 1
    counts = ops(out)
    assert counts["LayerNormalization"] == 5
    assert counts["ReduceMean"] == counts["Sqrt"] == counts["Pow"] == 0
    assert [i.version for i in out.opset_import if i.domain in ("", "ai.onnx")] == [max(17, opset)]
    assert report.numeric.max_abs_diff <= 1e-4


@pytest.mark.parametrize("scale", ["mul_scores", "div_scores", "sqrt_qk"])
@pytest.mark.parametrize("qkv", ["packed", "packed_split", "separate"])
def test_attention_scale_becomes_one_mul_after_the_scores(scale, qkv):
    cfg = TinyViTConfig(depth=2, scale=scale, qkv=qkv)
    out, report = canonicalize(build_tiny_vit(cfg))
    res = report.result("normalize-attention-scale")
    if scale == "mul_scores":
        assert res.applied == 0 and {r for _, r in res.refused} == {"already canonical"}
    else:
        assert res.applied == cfg.depth
    by_output = {o: n for n in out.graph.node for o in n.output}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in out.graph.initializer}
    for sm in (n for n in out.graph.node if n.op_type == "Softmax"):
        mul = by_output[sm.input[0]]
        assert mul.op_type == "Mul"
        assert by_output[mul.input[0]].op_type == "MatMul"
        value = inits[mul.input[1]]
        head_dim = cfg.dim // cfg.heads
        np.testing.assert_allclose(value, head_dim**-0.5, rtol=1e-6)
    assert report.numeric.max_abs_diff <= 1e-4


def test_fold_removes_exporter_shape_noise_on_real_model(shared_data):
    from onnxvq.core.graph import load_model

    model = load_model(shared_data / "models" / "vit_cifar10.onnx")
    out, report = canonicalize(model)
    assert ops(model)["Sqrt"] == 18 and ops(out)["Sqrt"] == 0  # the SDPA scale chains
    assert report.result("fold-static-shapes").applied == 12
    assert report.result("normalize-attention-scale").applied == 6
    assert report.numeric.max_abs_diff <= 1e-4


def test_each_setting_picks_a_declared_pipeline():
    pick = pipelines.quantization_pipeline
    plain = QuantConfig(ort_fusions=False)
    last = pipelines.UNSIGNED_WEIGHTS.passes  # every target-ort pipeline ends with it

    def ort(p):
        return p.passes + last

    assert pick(QuantConfig(target="trt")) is pipelines.W8A8
    assert pick(plain).passes == ort(pipelines.W8A8)
    assert pick(plain.with_(pts=True)).passes == ort(pipelines.PTS_W8A8)
    assert pick(plain.with_(lis=True)).passes == ort(pipelines.LIS_W8A8)
    assert pick(plain.with_(pts=True, lis=True)).passes == ort(pipelines.FULLY_QUANTIZED)
    # target ort: + ORT_LOWERING
    assert pick(QuantConfig()).passes == ort(pipelines.LOWERED[pipelines.W8A8])
    n = len(pipelines.ORT_LOWERING.passes)
    assert pick(QuantConfig(pts=True, lis=True)).passes[-n - 1:-1] == pipelines.ORT_LOWERING.passes
    assert [p.id for p in pipelines.FULLY_QUANTIZED.passes] == [
        "replace-layernorm", "replace-softmax", "quantize-weights", "insert-activation-qdq",
        "fold-requantize"]
    assert pipelines.canonical_pipeline(QuantConfig(target="trt")).passes[-1].id == \
        "fold-scale-into-query"
    assert pipelines.canonical_pipeline(QuantConfig()) is pipelines.CANONICAL


def test_canonicalisation_is_idempotent():
    once, _ = canonicalize(build_tiny_vit(TinyViTConfig(scale="div_scores")))
    twice, report = canonicalize(once)
    assert ops(twice) == ops(once)
    assert sum(r.applied for r in report.passes if r.pass_id != "fold-constants") == 0
