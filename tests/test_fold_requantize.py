"""fold-requantize removes only exact identities Q(DQ(q)) and refuses real requantizations."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxvq.core.pipeline import Pipeline
from onnxvq.core.runtime import make_session
from onnxvq.passes.fold_requantize import FoldRequantize


def _model(s2: float):
    inits = [numpy_helper.from_array(np.array(v, dtype=d), n) for n, v, d in (
        ("s1", 0.05, np.float32), ("z1", 128, np.uint8), ("s2", s2, np.float32),
        ("z2", 128, np.uint8))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s1", "z1"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s1", "z1"], ["d"]),
             helper.make_node("QuantizeLinear", ["d", "s2", "z2"], ["q2"]),
             helper.make_node("DequantizeLinear", ["q2", "s2", "z2"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_identity_requantize_is_removed_exactly():
    model = _model(0.05)
    out, report = Pipeline((FoldRequantize(),)).run(model, atol=0.0)
    assert report.result("fold-requantize").applied == 1
    assert [n.op_type for n in out.graph.node].count("QuantizeLinear") == 1
    x = {"x": np.linspace(-8, 8, 64, dtype=np.float32)}
    assert np.array_equal(make_session(model).run(None, x)[0], make_session(out).run(None, x)[0])


def test_real_requantize_is_refused():
    out, report = Pipeline((FoldRequantize(),)).run(_model(0.1))
    res = report.result("fold-requantize")
    assert res.applied == 0
    assert res.refused[0][1] == "a real requantization (different scale, zero point or type)"
