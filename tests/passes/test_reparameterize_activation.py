"""reparameterize-activation (RepQ-ViT for post-GELU tensors): Mul(1/r)[+Add(-b)] -> Linear(W')."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from passtools import reasons

from onnxvq.core.graph import to_model
from onnxvq.core.pipeline import PassContext
from onnxvq.core.validate import numeric_check
from onnxvq.passes.reparameterize_activation import ReparameterizeActivation

C, D = 8, 6
RNG = np.random.default_rng(1)


def _qp(zero=False):
    return (RNG.uniform(0.01, 0.2, C), np.zeros(C, int) if zero else RNG.integers(0, 30, C))


def _graph(shape=(2, 4, C), output=False, linear=True, layout=False):
    x = gs.Variable("x", np.float32, [2, 4, C])
    a = gs.Variable("a", np.float32, list(shape) if shape else None)
    nodes = [gs.Node("Relu", name="act", inputs=[x], outputs=[a])]
    src = a
    if layout:
        src = gs.Variable("a_t", np.float32, [4, 2, C])
        nodes.append(gs.Node("Transpose", name="t", attrs={"perm": [1, 0, 2]}, inputs=[a],
                             outputs=[src]))
    if linear:
        z = gs.Variable("z", np.float32, [*src.shape[:-1], D] if src.shape else None)
        w = gs.Constant("w", RNG.standard_normal((C, D)).astype(np.float32))
        nodes.append(gs.Node("MatMul", name="fc2", inputs=[src, w], outputs=[z]))
    else:
        z = gs.Variable("z", np.float32, [2, 4, C])
        nodes.append(gs.Node("Sigmoid", name="sig", inputs=[src], outputs=[z]))
    outputs = [z, a] if output else [z]
    return gs.Graph(nodes=nodes, inputs=[x], outputs=outputs, opset=17)


@pytest.mark.parametrize("zero", [False, True])
def test_rescale_is_exact_in_float(zero):
    graph = _graph()
    before = to_model(graph.copy())
    res = ReparameterizeActivation().run(graph, PassContext(channel_qparams={"a": _qp(zero)}))
    assert res.applied == 1 and res.counts["linears"] == 1
    ops = sorted(n.op for n in graph.nodes)
    # the rescale Mul, the shift Add (omitted when every zero point is 0), fc2's new bias Add
    assert ops == (["Add", "MatMul", "Mul", "Relu"] if zero else
                   ["Add", "Add", "MatMul", "Mul", "Relu"])
    assert numeric_check(before, to_model(graph), atol=1e-4).max_abs_diff <= 1e-4


@pytest.mark.parametrize(("name", "kwargs", "reason"), [
    ("missing", {}, "tensor not in the graph"),
    ("a", dict(shape=None), f"channel count unknown or not {C}"),
    ("a", dict(output=True), "tensor is a graph output"),
    ("a", dict(linear=False), "no foldable Linear consumes it"),
    ("a", dict(layout=True),
     "a Linear reaches it through a layout op (the rescale would need copies)"),
], ids=["missing", "shape", "output", "no-linear", "layout"])
def test_refusals(name, kwargs, reason):
    graph = _graph(**kwargs)
    res = ReparameterizeActivation().run(graph, PassContext(channel_qparams={name: _qp()}))
    assert res.applied == 0 and reasons(res) == [reason]
    assert sorted(n.op for n in graph.nodes if n.op in ("Mul", "Add")) == []
