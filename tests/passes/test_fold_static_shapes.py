"""fold-static-shapes: Shape dims that do not follow the batch size become constants."""

from __future__ import annotations

import numpy as np
from onnx import helper
from passtools import make_model, ops, reasons, run_pass

from onnxvq.passes.fold_static_shapes import FoldStaticShapes


def _model(x_shape):
    # a Reshape to a computed target hides the dims from shape inference (torch MHA does this)
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Slice", ["shape", "s0", "s1"], ["tail"]),
             helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
             helper.make_node("Concat", ["n1", "tail"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    return make_model(nodes, [("x", x_shape)], [("y", x_shape)],
                      {"s0": np.array([1], np.int64), "s1": np.array([3], np.int64),
                       "zero": np.int64(0), "zero1": np.array([0], np.int64)})


def test_static_dims_fold_and_the_batch_stays():
    out, res, numeric = run_pass(FoldStaticShapes(), _model(["N", 4, 8]))
    assert res.applied == 1  # the Slice of dims 1..2; the Gather of the batch dim stays
    assert ops(out)["Slice"] == 0 and ops(out)["Gather"] == 1 and ops(out)["Shape"] == 1
    assert numeric.max_abs_diff == 0.0
    tails = [i for i in out.graph.initializer if i.name.endswith("/static")]
    assert len(tails) == 1 and list(np.frombuffer(tails[0].raw_data, np.int64)) == [4, 8]


def test_refuses_symbolic_dims_besides_the_batch():
    out, res, _ = run_pass(FoldStaticShapes(), _model(["N", "T", 8]))
    assert res.applied == 0 and ops(out)["Slice"] == 1
    assert reasons(res) == ["input 'x' has symbolic dim 'T' on axis 1"]
