"""reparameterize-layernorm (RepQ-ViT): per-channel LN-output quantizers folded into LN + Linear.

The pass-level checks (exactness, every refusal); tests/test_reparam.py covers the quantizer."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from passtools import reasons

from onnxvq.core.graph import to_model
from onnxvq.core.pipeline import PassContext
from onnxvq.core.validate import numeric_check
from onnxvq.passes.reparameterize_layernorm import ReparameterizeLayerNorm

C, D = 8, 6
RNG = np.random.default_rng(0)
QP = (RNG.uniform(0.01, 0.2, C), RNG.integers(100, 156, C))


def _graph(axis=-1, gamma_const=True, ln_output=False, consumer="MatMul", extra=None):
    x = gs.Variable("x", np.float32, [2, 4, C])
    y, z = gs.Variable("y", np.float32, [2, 4, C]), gs.Variable("z", np.float32, [2, 4, D])
    gamma = (gs.Constant("g", RNG.uniform(0.5, 1.5, C).astype(np.float32)) if gamma_const
             else gs.Variable("g", np.float32, [C]))
    beta = gs.Constant("b", RNG.standard_normal(C).astype(np.float32))
    nodes = [gs.Node("LayerNormalization", name="ln", attrs={"axis": axis},
                     inputs=[x, gamma, beta], outputs=[y])]
    if consumer == "MatMul":
        w = gs.Constant("w", RNG.standard_normal((C, D)).astype(np.float32))
        nodes.append(gs.Node("MatMul", name="fc", inputs=[y, w], outputs=[z]))
    else:
        z = gs.Variable("z", np.float32, [2, 4, C])
        nodes.append(gs.Node("Relu", name="act", inputs=[y], outputs=[z]))
    outputs = [z, y] if ln_output else [z]
    if extra:
        r = gs.Variable("r", np.float32, [2, 4, C])
        nodes.append(gs.Node(extra, name="res", inputs=[y, x], outputs=[r]))
        outputs.append(r)
    inputs = [x] + ([] if gamma_const else [gamma])
    return gs.Graph(nodes=nodes, inputs=inputs, outputs=outputs, opset=17)


def _run(graph, compensate=True):
    ctx = PassContext(channel_qparams={"y": QP})
    return ReparameterizeLayerNorm(compensate=compensate).run(graph, ctx)


@pytest.mark.parametrize("extra", [None, "Add"])
def test_fold_is_exact_in_float(extra):
    graph = _graph(extra=extra)
    before = to_model(graph.copy())
    res = _run(graph)
    assert res.applied == 1 and res.counts["linears"] == 1
    assert res.counts["compensated"] == (1 if extra else 0)
    assert res.records[0].node == "ln" and res.records[0].linears == ("fc",)
    check = numeric_check(before, to_model(graph), atol=1e-4)
    assert check.max_abs_diff <= 1e-4


@pytest.mark.parametrize(("kwargs", "reason"), [
    (dict(axis=1), "LayerNorm not over the last axis (or rank unknown)"),
    (dict(gamma_const=False), "LayerNorm gamma/beta not constant"),
    (dict(ln_output=True), "LayerNorm output is a graph output"),
    (dict(consumer="Relu"), "no foldable Linear consumes the LayerNorm output"),
], ids=["axis", "gamma", "output", "no-linear"])
def test_refusals(kwargs, reason):
    graph = _graph(**kwargs)
    res = _run(graph)
    assert res.applied == 0 and reasons(res) == [reason]
    assert graph.nodes[0].inputs[1].name == "g"  # untouched


def test_refuses_other_consumers_without_compensation():
    res = _run(_graph(extra="Add"), compensate=False)
    assert reasons(res) == ["LayerNorm output also feeds Add (not a foldable Linear)"]


def test_refuses_a_channel_count_mismatch():
    graph = _graph()
    ctx = PassContext(channel_qparams={"y": (QP[0][:6], QP[1][:6])})
    res = ReparameterizeLayerNorm().run(graph, ctx)
    assert reasons(res) == [f"{C} channels but 6 calibrated"]
