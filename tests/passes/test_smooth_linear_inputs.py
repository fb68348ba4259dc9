"""smooth-linear-inputs (SmoothQuant): factors folded into the producer and the consuming Linears.

Exactness in float (1e-4), the factors landing where they should, every refusal; the alpha search
is tested in tests/test_smooth.py."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from passtools import reasons

from onnxvq.core.graph import to_model
from onnxvq.core.pipeline import PassContext
from onnxvq.core.validate import numeric_check
from onnxvq.passes.smooth_linear_inputs import SmoothLinearInputs

C, D = 8, 6
RNG = np.random.default_rng(0)
S = RNG.uniform(0.2, 5.0, C)


def _const(name, *shape):
    return gs.Constant(name, RNG.standard_normal(shape).astype(np.float32))


def _ln_graph(consumers=("fc",), axis=-1, gamma_const=True, y_output=False, extra=None):
    """x -> LayerNorm -> y -> MatMul(s) [-> Add]; `extra` adds another kind of reader of y."""
    x, y = gs.Variable("x", np.float32, [2, 4, C]), gs.Variable("y", np.float32, [2, 4, C])
    gamma = _const("g", C) if gamma_const else gs.Variable("g", np.float32, [C])
    nodes = [gs.Node("LayerNormalization", name="ln", attrs={"axis": axis},
                     inputs=[x, gamma, _const("b", C)], outputs=[y])]
    outs = []
    for name in consumers:
        z = gs.Variable(f"{name}_out", np.float32, [2, 4, D])
        nodes.append(gs.Node("MatMul", name=name, inputs=[y, _const(f"{name}_w", C, D)],
                             outputs=[z]))
        outs.append(z)
    if extra:
        r = gs.Variable("r", np.float32, [2, 4, C])
        nodes.append(gs.Node(extra, name="res", inputs=[y, x] if extra == "Add" else [y],
                             outputs=[r]))
        outs.append(r)
    inputs = [x] + ([] if gamma_const else [gamma])
    return gs.Graph(nodes=nodes, inputs=inputs, outputs=outs + ([y] if y_output else []),
                    opset=17)


def _relu_graph(producer="MatMul", bias=True, act="Relu", shared=False):
    """x -> fc1 (+ bias) -> act -> y -> fc2; `shared`: fc1's output is also a graph output."""
    x, y = gs.Variable("x", np.float32, [2, 4, D]), gs.Variable("y", np.float32, [2, 4, C])
    h, out = gs.Variable("h", np.float32, [2, 4, C]), gs.Variable("out", np.float32, [2, 4, D])
    if producer == "Gemm":
        x = gs.Variable("x", np.float32, [8, D])
        y, h = gs.Variable("y", np.float32, [8, C]), gs.Variable("h", np.float32, [8, C])
        out = gs.Variable("out", np.float32, [8, D])
        nodes = [gs.Node("Gemm", name="fc1", attrs={"transB": 1},
                         inputs=[x, _const("w1", C, D), _const("b1", C)], outputs=[h])]
    elif bias:
        m = gs.Variable("m", np.float32, [2, 4, C])
        nodes = [gs.Node("MatMul", name="fc1", inputs=[x, _const("w1", D, C)], outputs=[m]),
                 gs.Node("Add", name="bias1", inputs=[m, _const("b1", C)], outputs=[h])]
    else:
        nodes = [gs.Node("MatMul", name="fc1", inputs=[x, _const("w1", D, C)], outputs=[h])]
    nodes += [gs.Node(act, name="act", inputs=[h], outputs=[y]),
              gs.Node("MatMul", name="fc2", inputs=[y, _const("w2", C, D)], outputs=[out])]
    return gs.Graph(nodes=nodes, inputs=[x], outputs=[out] + ([h] if shared else []), opset=17)


def _run(graph, s=S, name="y"):
    return SmoothLinearInputs().run(graph, PassContext(smooth_factors={name: s}))


@pytest.mark.parametrize("consumers", [("fc",), ("q", "k", "v")])
def test_layernorm_fold_is_exact_in_float(consumers):
    graph = _ln_graph(consumers)
    before = to_model(graph.copy())
    gamma = graph.nodes[0].inputs[1].values.copy()
    res = _run(graph)
    assert res.applied == 1 and res.counts == {"layernorm": 1, "linears": len(consumers)}
    np.testing.assert_allclose(graph.nodes[0].inputs[1].values, gamma / S, rtol=1e-6)
    assert numeric_check(before, to_model(graph), atol=1e-4).max_abs_diff <= 1e-4


@pytest.mark.parametrize(("producer", "bias"), [("MatMul", True), ("MatMul", False),
                                                ("Gemm", True)])
def test_relu_fold_is_exact_in_float(producer, bias):
    graph = _relu_graph(producer, bias)
    before = to_model(graph.copy())
    n_nodes = len(graph.nodes)
    res = _run(graph)
    assert res.applied == 1 and res.counts == {"relu": 1, "linears": 1}
    assert len(graph.nodes) == n_nodes  # nothing added
    assert numeric_check(before, to_model(graph), atol=1e-4).max_abs_diff <= 1e-4


def test_the_factors_move_the_outlier_into_the_weight():
    """y' = y / s: the channel range of y' is y's divided by s (the point of the migration)."""
    graph = _ln_graph()
    w = graph.nodes[1].inputs[1].values.astype(np.float64)
    _run(graph)
    np.testing.assert_allclose(graph.nodes[1].inputs[1].values, w * S[:, None], rtol=1e-6)


@pytest.mark.parametrize(("graph", "reason"), [
    (lambda: _ln_graph(axis=1), "LayerNorm not over the last axis (or rank unknown)"),
    (lambda: _ln_graph(gamma_const=False), "LayerNorm gamma/beta not constant (or shared)"),
    (lambda: _ln_graph(y_output=True), "tensor is a graph output"),
    (lambda: _ln_graph(consumers=(), extra="Relu"), "no foldable Linear consumes it"),
    (lambda: _ln_graph(extra="Add"), "also read by Add (not a foldable Linear)"),
    (lambda: _relu_graph(act="Sigmoid"),
     "produced by Sigmoid (only a LayerNorm or a Relu of a Linear fold exactly)"),
    (lambda: _relu_graph(shared=True), "Relu input is not a Linear (+ bias) read only by it"),
], ids=["axis", "gamma", "output", "no-linear", "residual", "sigmoid", "shared-input"])
def test_refusals(graph, reason):
    g = graph()
    before = to_model(g.copy())
    res = _run(g)
    assert res.applied == 0 and reasons(res) == [reason]
    assert numeric_check(before, to_model(g), atol=0).max_abs_diff == 0  # untouched


@pytest.mark.parametrize(("s", "name", "reason"), [
    (S[:5], "y", "channel count unknown or not 5"),
    (-S, "y", "a smoothing factor is not positive"),
    (S, "nope", "tensor not in the graph"),
])
def test_refuses_bad_factors(s, name, reason):
    assert reasons(_run(_ln_graph(), s, name)) == [reason]
