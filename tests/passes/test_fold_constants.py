"""fold-constants: constant subgraphs and static Shape chains become initializers."""

from __future__ import annotations

import numpy as np
from onnx import helper
from passtools import make_model, ops, run_pass

from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.passes.fold_constants import FoldConstants
from onnxvq.passes.pipelines import CANONICAL


def _model():
    nodes = [helper.make_node("Mul", ["a", "b"], ["ab"]),  # constant: folds
             helper.make_node("Relu", ["x"], ["r"]),  # graphsurgeon knows no shape for r
             helper.make_node("Shape", ["r"], ["shape"]),
             helper.make_node("Gather", ["shape", "last"], ["d"], axis=0),  # static dim: folds
             helper.make_node("Cast", ["d"], ["df"], to=1),
             helper.make_node("Sqrt", ["df"], ["sd"]),
             helper.make_node("Identity", ["x"], ["xi"]),  # a rename: dropped
             helper.make_node("Mul", ["xi", "ab"], ["y1"]),
             helper.make_node("Add", ["y1", "r"], ["y0"]),
             helper.make_node("Div", ["y0", "sd"], ["y"])]
    return make_model(nodes, [("x", ["N", 4, 16])], [("y", ["N", 4, 16])],
                      {"a": np.float32(2.0), "b": np.float32(3.0), "last": np.int64(2)})


def test_folds_constants_and_static_shape_chains():
    out, res, numeric = run_pass(FoldConstants(), _model())
    # in a shape-inferring pipeline (CANONICAL does it for fold-constants) the Shape chain folds too
    shaped, report = CANONICAL.run(_model())
    assert res.applied == res.counts["nodes_removed"] == 2  # the constant Mul, the Identity
    assert ops(out) == {"Relu": 1, "Shape": 1, "Gather": 1, "Cast": 1, "Sqrt": 1, "Mul": 1,
                        "Add": 1, "Div": 1}
    assert report.result("fold-constants").applied == 6
    assert ops(shaped) == {"Relu": 1, "Mul": 1, "Add": 1, "Div": 1}
    assert numeric.max_abs_diff == 0.0 and report.numeric.max_abs_diff <= 1e-6


def test_tiny_vit_loses_only_shape_noise():
    model = build_tiny_vit(TinyViTConfig(depth=1))
    out, res, numeric = run_pass(FoldConstants(), model)
    assert ops(out)["MatMul"] == ops(model)["MatMul"]
    assert ops(out)["Softmax"] == 1 and numeric.max_abs_diff <= 1e-5
    assert res.refused == []
