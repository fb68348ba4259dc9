"""Canonicalisation: each pass on tiny ViTs built in code, numerically neutral, with exact
counts."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

from onnxvq.api import canonicalize
from onnxvq.core.pipeline import Pipeline
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.passes.fuse_layernorm import FuseLayerNorm
from onnxvq.passes.normalize_attention_scale import NormalizeAttentionScale


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


def test_layernorm_fusion_refuses_a_non_last_axis():
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 8])
    eps = helper.make_tensor("eps", TensorProto.FLOAT, [], [1e-5])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1]),
        helper.make_node("Sub", ["x", "m"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["p"]),
        helper.make_node("ReduceMean", ["p"], ["v"], axes=[1]),
        helper.make_node("Add", ["v", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["s"]),
        helper.make_node("Div", ["d", "s"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], [eps, two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    out, report = Pipeline((FuseLayerNorm(),)).run(model)
    res = report.result("fuse-layernorm")
    assert res.applied == 0
    assert res.refused[0][1] == "reduction is not over the last axis only"
    assert ops(out)["LayerNormalization"] == 0


def test_scale_pass_keeps_a_scale_shared_with_another_consumer():
    """A Mul on q whose output also feeds something else cannot be moved after the MatMul."""
    model = build_tiny_vit(TinyViTConfig(depth=1, scale="sqrt_qk"))
    out, report = Pipeline((NormalizeAttentionScale(),)).run(model)
    assert report.result("normalize-attention-scale").applied == 1
    assert report.numeric.max_abs_diff <= 1e-5
