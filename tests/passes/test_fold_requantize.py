"""fold-requantize removes only exact identities Q(DQ(q)) and refuses real requantizations."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from passtools import ops, reasons, run_pass

from onnxvq.core.runtime import make_session
from onnxvq.passes.fold_requantize import FoldRequantize


def _model(s2, z2_dtype=np.uint8):
    inits = [numpy_helper.from_array(np.array(v, dtype=d), n) for n, v, d in (
        ("s1", 0.05, np.float32), ("z1", 128, np.uint8), ("s2", s2, np.float32),
        ("z2", np.full(np.shape(s2), 128 if z2_dtype == np.uint8 else 0), z2_dtype))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s1", "z1"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s1", "z1"], ["d"]),
             helper.make_node("QuantizeLinear", ["d", "s2", "z2"], ["q2"]),
             helper.make_node("DequantizeLinear", ["q2", "s2", "z2"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])
    if np.ndim(s2):
        nodes[2].attribute.append(helper.make_attribute("axis", 0))
        nodes[3].attribute.append(helper.make_attribute("axis", 0))
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_identity_requantize_is_removed_exactly():
    model = _model(0.05)
    out, res, numeric = run_pass(FoldRequantize(), model, atol=0.0)
    assert res.applied == 1
    assert ops(out) == {"QuantizeLinear": 1, "DequantizeLinear": 1} and numeric.max_abs_diff == 0
    x = {"x": np.linspace(-8, 8, 64, dtype=np.float32)}
    assert np.array_equal(make_session(model).run(None, x)[0], make_session(out).run(None, x)[0])


def test_real_requantize_is_refused():
    out, res, _ = run_pass(FoldRequantize(), _model(0.1))
    assert res.applied == 0 and ops(out)["QuantizeLinear"] == 2
    assert reasons(res) == ["a real requantization (different scale, zero point or type)"]


def test_other_zero_point_type_is_refused():
    out, res, _ = run_pass(FoldRequantize(), _model(0.05, np.int8), numeric="none")
    assert res.applied == 0 and ops(out)["QuantizeLinear"] == 2
    assert reasons(res) == ["a real requantization (different scale, zero point or type)"]


def test_per_axis_parameters_are_refused():
    out, res, _ = run_pass(FoldRequantize(), _model(np.full(64, 0.05, np.float32)))
    assert res.applied == 0 and ops(out)["QuantizeLinear"] == 2
    assert reasons(res) == ["per-axis or non-constant parameters"]
