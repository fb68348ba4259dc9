"""compose-key-transpose: Transpose [0,1,3,2] after a head-split Transpose [0,2,1,3] (Hugging
Face's SDPA k, dynamo) becomes TorchScript's one Transpose [0,2,3,1]; bit-exact."""

from __future__ import annotations

import pytest
from onnx import helper
from passtools import make_model, ops

from onnxvq.core.pipeline import Pipeline
from onnxvq.passes.compose_key_transpose import ComposeKeyTranspose


def run_pass(p, model):
    out, report = Pipeline((p,), infer_shapes=True).run(model)
    return out, report.passes[0], report.numeric


def _pair(inner, outer, *, inner_out=False):
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=inner),
             helper.make_node("Transpose", ["t"], ["u"], perm=outer),
             helper.make_node("Relu", ["u"], ["y"])]
    outs = [("y", None), *((("t", None),) if inner_out else ())]
    return make_model(nodes, [("x", [2, 5, 3, 4])], outs)


@pytest.mark.parametrize("inner, composed", [
    ([0, 2, 1, 3], [0, 2, 3, 1]),  # HF's k [B, N, H, D] -> [B, H, N, D], then kᵀ
    ([0, 1, 3, 2], None),  # the identity: x itself
])
def test_the_pair_becomes_one_transpose_bit_exact(inner, composed):
    out, res, numeric = run_pass(ComposeKeyTranspose(), _pair(inner, [0, 1, 3, 2]))
    assert res.applied == 1 and numeric.max_abs_diff == 0.0
    if composed is None:
        assert ops(out) == {"Relu": 1} and list(out.graph.node[0].input) == ["x"]
    else:
        node = out.graph.node[0]
        assert ops(out) == {"Transpose": 1, "Relu": 1}
        assert list(node.input) == ["x"] and list(node.attribute[0].ints) == composed


@pytest.mark.parametrize("kwargs", [
    dict(inner=[0, 2, 1, 3], outer=[0, 2, 1, 3]),  # the outer is not kᵀ's swap
    dict(inner=[0, 2, 1, 3], outer=[0, 1, 3, 2], inner_out=True),  # the inner is read too
])
def test_other_pairs_are_not_matched(kwargs):
    model = _pair(**kwargs)
    out, res, _ = run_pass(ComposeKeyTranspose(), model)
    assert res.applied == 0 and ops(out) == ops(model) == {"Transpose": 2, "Relu": 1}
