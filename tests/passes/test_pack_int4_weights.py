"""pack-int4-weights: 4-bit weight codes stored as INT4 behind a Cast, bit-exact, opset 21."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from qdq_graphs import Builder, op_types, run_model

from onnxvq.core.config import QuantConfig
from onnxvq.core.graph import to_graph
from onnxvq.core.pipeline import PassContext, Pipeline
from onnxvq.passes.pack_int4_weights import PackInt4Weights, raise_opset
from onnxvq.plugins.ops import has_attention_bias, make_attention_node

ORT = PassContext(config=QuantConfig())


def _mlp(low: int = -7, high: int = 7, reduce_axes: bool = False, opset: int = 17):
    b = Builder()
    x = b.qdq("x", 0.03, 100)
    w = b.rng.integers(low, high + 1, (32, 48)).astype(np.int8)
    dq = b.op("DequantizeLinear", b.const(w, "w"), b.const(np.full(48, 0.05, np.float32)),
              b.const(np.zeros(48, np.int8), "wz"), axis=1)[0]
    y = b.op("MatMul", x, dq)[0]
    if reduce_axes:
        y = b.op("ReduceMean", y, axes=[-1], keepdims=1)[0]
    return b.model({"x": [3, 7, 32]}, {y: [3, 7, 1 if reduce_axes else 48]}, opset=opset), w


def _feeds():
    return {"x": np.random.default_rng(2).standard_normal((3, 7, 32)).astype(np.float32)}


def _int4(model):
    return [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT4]


def test_packs_int4_codes_bit_exactly_at_opset_21():
    model, w = _mlp()
    out, report = Pipeline((PackInt4Weights(),)).run(model, ctx=ORT, numeric="none")
    r = report.result("pack-int4-weights")
    assert r.applied == 1 and r.counts["bytes_saved"] == 32 * 48 // 2
    (packed,) = _int4(out)
    assert len(packed.raw_data) == 32 * 48 // 2  # two codes a byte
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(packed).astype(np.int8), w)
    assert sorted(op_types(out)) == ["Cast", "DequantizeLinear", "DequantizeLinear", "MatMul",
                                     "QuantizeLinear"]
    assert out.opset_import[0].version == 21 and out.ir_version >= 10
    assert model.opset_import[0].version == 17  # the input model is left as it was
    np.testing.assert_array_equal(run_model(out, _feeds())[0], run_model(model, _feeds())[0])


def test_leaves_8_bit_codes_and_the_opset_alone():
    model, _ = _mlp(-127, 127)
    out, report = Pipeline((PackInt4Weights(),)).run(model, ctx=ORT, numeric="none")
    assert report.result("pack-int4-weights").applied == 0
    assert not _int4(out) and out.opset_import[0].version == 17


def test_rewrites_reduce_axes_for_opset_18_and_up():
    model, _ = _mlp(reduce_axes=True, opset=13)
    out, _ = Pipeline((PackInt4Weights(),)).run(model, ctx=ORT, numeric="none")
    (reduce,) = [n for n in out.graph.node if n.op_type == "ReduceMean"]
    assert len(reduce.input) == 2 and not [a for a in reduce.attribute if a.name == "axes"]
    np.testing.assert_array_equal(run_model(out, _feeds())[0], run_model(model, _feeds())[0])


@pytest.mark.parametrize("why", ["trt", "gridsample"])
def test_refusals(why):
    model, _ = _mlp()
    ctx = PassContext(config=QuantConfig(target="trt")) if why == "trt" else ORT
    if why == "gridsample":  # a node the pass cannot move to opset 21 (its modes were renamed)
        model.graph.node.append(onnx.helper.make_node("GridSample", ["a", "b"], ["c"]))
    graph = to_graph(model)
    r = PackInt4Weights().run(graph, ctx)
    assert r.applied == 0
    assert ("TensorRT" if why == "trt" else "GridSample") in r.refused[0][1]


@pytest.mark.parametrize("bias", [False, True])
def test_raising_the_opset_keeps_the_attention_body(bias):
    """The com.onnxvq bodies are rebuilt at opset 21: a graph holding QLinearAttention's biased
    body (a node with a bias) keeps that one, a graph without keeps the bias-free one."""
    g = gs.Graph(opset=17)
    x = gs.Variable("x", np.uint8, [4, 9, 3, 1, 8])
    attrs = dict(num_heads=1, q_zero_point=128, k_zero_point=128, v_zero_point=128,
                 qk_scale=0.01, probs_scale=1 / 255, probs_zero_point=0, acc_scale=1e-4,
                 out_scale=0.02, out_zero_point=128)
    g.inputs = [x]
    g.outputs = [make_attention_node(g, "QLinearAttention", x, attrs, name="attn",
                                     bias=np.zeros((1, 1, 9, 9), np.float32) if bias else None)]
    raise_opset(g, 21)
    body = next(f for f in g.functions if f.name == "QLinearAttention")
    assert body.opset == 21 and has_attention_bias(g.functions) is bias
