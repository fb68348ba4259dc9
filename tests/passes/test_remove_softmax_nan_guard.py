"""remove-softmax-nan-guard: Where(IsNaN(p), 0, p) after a Softmax is dropped."""

from __future__ import annotations

import numpy as np
from onnx import helper
from passtools import make_model, ops, reasons, run_pass

from onnxvq.passes.remove_softmax_nan_guard import RemoveSoftmaxNanGuard


def _guarded(fill: float):
    nodes = [helper.make_node("Softmax", ["x"], ["p"], axis=-1),
             helper.make_node("IsNaN", ["p"], ["nan"]),
             helper.make_node("Where", ["nan", "fill", "p"], ["g"]),
             helper.make_node("MatMul", ["g", "v"], ["y"])]
    return make_model(nodes, [("x", [2, 4, 4]), ("v", [2, 4, 8])], [("y", [2, 4, 8])],
                      {"fill": np.float32(fill)})


def test_guard_is_dropped_and_softmax_feeds_av():
    out, res, numeric = run_pass(RemoveSoftmaxNanGuard(), _guarded(0.0))
    assert res.applied == 1
    assert ops(out) == {"Softmax": 1, "MatMul": 1}
    assert out.graph.node[1].input[0] == out.graph.node[0].output[0]
    assert numeric.max_abs_diff == 0.0


def test_guard_as_graph_output_is_rewired():
    nodes = [helper.make_node("Softmax", ["x"], ["p"], axis=-1),
             helper.make_node("IsNaN", ["p"], ["nan"]),
             helper.make_node("Where", ["nan", "fill", "p"], ["y"])]
    model = make_model(nodes, [("x", [2, 4])], [("y", [2, 4])], {"fill": np.float32(0.0)})
    out, res, numeric = run_pass(RemoveSoftmaxNanGuard(), model)
    assert res.applied == 1 and ops(out) == {"Softmax": 1}
    assert [o.name for o in out.graph.output] == ["y"] and numeric.max_abs_diff == 0.0  # kept


def test_refuses_a_nonzero_fill():
    model = _guarded(1.0)
    out, res, _ = run_pass(RemoveSoftmaxNanGuard(), model)
    assert res.applied == 0 and ops(out) == ops(model)
    assert reasons(res) == ["guard replaces NaN rows with something other than 0"]
