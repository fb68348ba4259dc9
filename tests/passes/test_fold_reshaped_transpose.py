"""fold-reshaped-transpose: dynamo's kᵀ (Reshape [-1, N, D], Transpose [0,2,1], Reshape back to
[B, H, D, N]) becomes one Transpose [0,1,3,2], bit-exact, with the shape proven from the graph."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from passtools import make_model, ops, reasons

from onnxvq.core.pipeline import Pipeline
from onnxvq.passes.fold_reshaped_transpose import FoldReshapedTranspose

LOW = np.iinfo(np.int64).min
K = ["B", 3, 5, 4]  # [B, H, N, D], the batch symbolic as dynamo exports it


def _run(model, numeric="end"):
    out, report = Pipeline((FoldReshapedTranspose(),), infer_shapes=True).run(model,
                                                                               numeric=numeric)
    return out, report.passes[0], report.numeric


def _chain(target_nodes, target, *, first=(-1, 5, 4), k=K, extra_out=(), q=None):
    """q·kᵀ with kᵀ = Reshape(Transpose(Reshape(k, first), [0,2,1]), target)."""
    nodes = [helper.make_node("Reshape", ["k", "first"], ["k3"]),
             helper.make_node("Transpose", ["k3"], ["k3t"], perm=[0, 2, 1]),
             *target_nodes,
             helper.make_node("Reshape", ["k3t", target], ["kt"]),
             helper.make_node("MatMul", ["q", "kt"], ["s"])]
    inits = {"first": np.array(first, np.int64), "d": np.array([k[3]], np.int64),
             "n": np.array([k[2] if isinstance(k[2], int) else 5], np.int64),
             "lo": np.array([LOW]), "m2": np.array([-2]),
             "static": np.array([2, 3, 4, 5], np.int64), "i0": np.array(0), "i1": np.array(1),
             "ax0": np.array([0])}
    outs = [("s", None), *((o, None) for o in extra_out)]
    return make_model(nodes, [("q", q or [k[0], 3, 5, 4]), ("k", k)], outs, inits, opset=17)


_SLICED = [helper.make_node("Shape", ["k"], ["sh"]),
           helper.make_node("Slice", ["sh", "lo", "m2"], ["lead"]),
           helper.make_node("Concat", ["lead", "d", "n"], ["t"], axis=0)]
_GATHERED = [helper.make_node("Shape", ["k"], ["sh"]),
             helper.make_node("Gather", ["sh", "i0"], ["b"], axis=0),
             helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"]),
             helper.make_node("Gather", ["sh", "i1"], ["h"], axis=0),
             helper.make_node("Unsqueeze", ["h", "ax0"], ["h1"]),
             helper.make_node("Concat", ["b1", "h1", "d", "n"], ["t"], axis=0)]
_WINDOW = [helper.make_node("Shape", ["k"], ["lead"], start=0, end=-2),  # opset 15's window
           helper.make_node("Concat", ["lead", "d", "n"], ["t"], axis=0)]


@pytest.mark.parametrize("target_nodes, target, k", [
    (_SLICED, "t", K),  # dynamo: Concat(Shape(k)[:-2], [D], [N])
    (_GATHERED, "t", K),  # TorchScript's Unsqueeze(Gather(Shape(k), i)) entries
    (_WINDOW, "t", K),
    ([], "static", [2, 3, 5, 4]),  # fold-static-shapes folded a static batch's shape
])
def test_the_chain_becomes_one_transpose_bit_exact(target_nodes, target, k):
    out, res, numeric = _run(_chain(target_nodes, target, k=k))
    assert res.applied == 1 and reasons(res) == []
    assert ops(out) == {"Transpose": 1, "MatMul": 1}  # the Shape arithmetic is gone too
    tr = next(n for n in out.graph.node if n.op_type == "Transpose")
    assert list(tr.input) == ["k"] and list(tr.attribute[0].ints) == [0, 1, 3, 2]
    assert numeric.max_abs_diff == 0.0


def test_a_minus_one_among_static_leading_dims_is_proven():
    model = _chain([], "static", k=[2, 3, 5, 4])
    model.graph.initializer[[i.name for i in model.graph.initializer].index("static")] \
        .CopyFrom(helper.make_tensor("static", 7, [4], [2, -1, 4, 5]))
    out, res, numeric = _run(model)
    assert res.applied == 1 and numeric.max_abs_diff == 0.0


@pytest.mark.parametrize("kwargs, reason", [
    # [B·H, D, N] viewed from the wrong split of k's elements: not a transpose of k's last axes
    (dict(first=(-1, 4, 5)), "first Reshape is not to [-1, N, D] of the input's last two dims"),
    (dict(extra_out=("k3t",)),
     "an intermediate of the chain is read elsewhere or is a graph output"),
])
def test_refusals_name_what_is_not_proven(kwargs, reason):
    model = _chain(_SLICED, "t", **kwargs)
    out, res, _ = _run(model, numeric="none")
    assert res.applied == 0 and reasons(res) == [reason]
    assert ops(out)["Transpose"] == 1 and ops(out)["Reshape"] == 2


def test_refuses_leading_dims_it_cannot_prove():
    # [3, 2, 4, 5] is a valid view of [2, 3, 4, 5] but swaps B and H: not k's leading dims
    model = _chain([], "static", k=[2, 3, 5, 4], q=[3, 2, 5, 4])
    idx = [i.name for i in model.graph.initializer].index("static")
    model.graph.initializer[idx].CopyFrom(helper.make_tensor("static", 7, [4], [3, 2, 4, 5]))
    out, res, _ = _run(model, numeric="none")
    assert reasons(res) == ["second Reshape's shape is not provably the input's leading dims, "
                            "then D, N"]


def test_refuses_symbolic_last_dims():
    model = _chain(_SLICED, "t", k=[2, 3, "N", 4])
    out, res, _ = _run(model, numeric="none")
    assert res.applied == 0 and reasons(res) == ["input's last two dims are not static"]
