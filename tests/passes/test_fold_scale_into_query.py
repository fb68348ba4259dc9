"""fold-scale-into-query: Mul(MatMul(q, kᵀ), s) -> MatMul(Mul(q, s), kᵀ) for TensorRT."""

from __future__ import annotations

import numpy as np
from onnx import helper
from passtools import make_model, ops, reasons, run_pass

from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.passes.fold_scale_into_query import FoldScaleIntoQuery


def test_scale_moves_onto_q():
    model = build_tiny_vit(TinyViTConfig(depth=2))
    out, res, numeric = run_pass(FoldScaleIntoQuery(), model)
    assert res.applied == 2 and res.refused == []
    assert ops(out) == ops(model)  # one Mul moved per attention, none added or lost
    by_output = {o: n for n in out.graph.node for o in n.output}
    for sm in (n for n in out.graph.node if n.op_type == "Softmax"):
        scores = by_output[sm.input[0]]
        assert scores.op_type == "MatMul" and by_output[scores.input[0]].op_type == "Mul"
    assert numeric.max_abs_diff <= 1e-5


def _attention(extra_q_reader: bool = False, extra_scores_reader: bool = False):
    nodes = [helper.make_node("MatMul", ["q", "k"], ["s"]),
             helper.make_node("Mul", ["s", "scale"], ["ss"]),
             helper.make_node("Softmax", ["ss"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    outputs = [("y", [2, 4, 8])]
    if extra_q_reader:
        nodes.append(helper.make_node("Relu", ["q"], ["q_other"]))
        outputs.append(("q_other", [2, 4, 8]))
    if extra_scores_reader:
        nodes.append(helper.make_node("Relu", ["s"], ["s_other"]))
        outputs.append(("s_other", [2, 4, 4]))
    return make_model(nodes, [("q", [2, 4, 8]), ("k", [2, 8, 4]), ("v", [2, 4, 8])], outputs,
                      {"scale": np.float32(0.125)})


def test_refuses_a_q_with_other_readers():
    model = _attention(extra_q_reader=True)
    out, res, _ = run_pass(FoldScaleIntoQuery(), model)
    assert res.applied == 0 and reasons(res) == ["q has other consumers"]
    assert ops(out) == ops(model)


def test_refuses_scores_with_other_readers():
    model = _attention(extra_scores_reader=True)
    out, res, _ = run_pass(FoldScaleIntoQuery(), model)
    assert res.applied == 0 and reasons(res) == ["scores feed more than the scale"]
