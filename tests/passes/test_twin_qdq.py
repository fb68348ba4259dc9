"""twin-qdq: PTQ4ViT twin-uniform quantizers as two Q/DQ branches into two MatMuls, summed."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from passtools import reasons

from onnxvq.core.graph import to_model
from onnxvq.core.params import TwinQParams
from onnxvq.core.pipeline import PassContext
from onnxvq.core.runtime import make_session
from onnxvq.passes.twin_qdq import TwinQDQ

RNG = np.random.default_rng(2)
V = RNG.standard_normal((2, 4, 8)).astype(np.float32)


def _graph(kind: str, consumer: str = "MatMul") -> gs.Graph:
    x = gs.Variable("x", np.float32, [2, 4, 4])
    a = gs.Variable("a", np.float32, [2, 4, 4])
    act = (gs.Node("Softmax", name="sm", attrs={"axis": -1}, inputs=[x], outputs=[a])
           if kind == "softmax" else gs.Node("Gelu", name="gelu", inputs=[x], outputs=[a]))
    y = gs.Variable("y", np.float32, [2, 4, 8] if consumer == "MatMul" else [2, 4, 4])
    use = (gs.Node("MatMul", name="av", inputs=[a, gs.Constant("v", V)], outputs=[y])
           if consumer == "MatMul" else gs.Node("Relu", name="av", inputs=[a], outputs=[y]))
    return gs.Graph(nodes=[act, use], inputs=[x], outputs=[y], opset=20)


def _params(kind: str) -> TwinQParams:
    if kind == "softmax":  # fine step below 1/16, coarse step 2^4 times it
        return TwinQParams("a", "softmax", 8, 1 / 2032, 1 / 127, 1 / 16, 0, 0, "uint8", "av")
    return TwinQParams("a", "gelu", 8, 0.17 / 127, 10.0 / 127, 0.0, 127, 0, "uint8", "av")


def _twin(x: np.ndarray, p: TwinQParams) -> np.ndarray:
    """The twin-uniform fake quantization, written independently of the pass."""
    k = 2 ** (p.bits - 1) - 1
    low = (x < p.threshold) if p.kind == "softmax" else (x < 0)
    q_low = np.clip(np.rint(x / p.low_scale), -k, k) * p.low_scale
    q_high = np.clip(np.rint(x / p.high_scale), 0, k) * p.high_scale
    return np.where(low, q_low, q_high)


@pytest.mark.parametrize("kind", ["softmax", "gelu"])
def test_two_branches_equal_the_twin_quantizer(kind):
    graph, p = _graph(kind), _params(kind)
    before = to_model(graph.copy())
    res = TwinQDQ().run(graph, PassContext(twin_qparams={"a": p}))
    assert res.applied == 1 and res.refused == []
    ops = sorted(n.op for n in graph.nodes)
    assert ops.count("QuantizeLinear") == ops.count("DequantizeLinear") == 2
    assert ops.count("MatMul") == 2 and ops.count("Add") == 1
    x = (RNG.standard_normal((2, 4, 4)) * 3).astype(np.float32)
    fp32 = make_session(before).run(None, {"x": x})[0]
    got = make_session(to_model(graph)).run(None, {"x": x})[0]
    probs = _activation(before, x)
    np.testing.assert_allclose(got, _twin(probs, p) @ V, rtol=1e-5, atol=1e-5)
    assert np.abs(got - fp32).max() < 0.1  # and close to FP32


def _activation(model, x):
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, None))
    return make_session(m).run(["a"], {"x": x})[0]


def test_refuses_a_consumer_that_is_not_a_matmul():
    graph = _graph("softmax", consumer="Relu")
    res = TwinQDQ().run(graph, PassContext(twin_qparams={"a": _params("softmax")}))
    assert res.applied == 0 and reasons(res) == ["consumer av is not a MatMul"]
    assert sorted(n.op for n in graph.nodes) == ["Relu", "Softmax"]


def _adversarial(p: TwinQParams) -> np.ndarray:
    """Values where a twin quantizer can go wrong: zero, the split and its float32 neighbours,
    every rounding midpoint of both steps, the top code, past the top (clipped)."""
    f = np.float32
    k = 2 ** (p.bits - 1) - 1
    lo, hi = f(p.low_scale), f(p.high_scale)
    if p.kind == "softmax":
        t = f(p.threshold)
        edge = [0.0, np.nextafter(t, f(0)), t, np.nextafter(t, f(1)), k * hi, 1.0, 1.5]
        mids = [(j + 0.5) * lo for j in range(k)] + [(j + 0.5) * hi for j in range(k)]
    else:
        edge = [0.0, -0.0, np.nextafter(f(0), f(-1)), -k * lo, -(k + 3) * lo, k * hi, 2 * k * hi]
        mids = [-(j + 0.5) * lo for j in range(k)] + [(j + 0.5) * hi for j in range(k)]
    vals = np.array(edge + mids, np.float32)
    n = -(-len(vals) // 16)
    return np.resize(vals, n * 16).reshape(n, 4, 4)  # every value at least once


def _codes(x: np.ndarray, p: TwinQParams) -> tuple[np.ndarray, np.ndarray]:
    """The two branches' uint8 codes as ONNX QuantizeLinear computes them (float32 x / scale,
    round half to even, + zero point, saturate), written independently of the pass."""
    f = np.float32
    k = 2 ** (p.bits - 1) - 1
    if p.kind == "softmax":
        x1 = np.where(x < f(p.threshold), x, f(0))
        x2 = np.minimum(x - x1, f(p.high_scale) * f(k))
    else:
        x1, x2 = np.minimum(x, f(0)), np.clip(x, f(0), f(p.high_scale) * f(k))

    def q(v, s, z):
        return np.clip(np.rint(v / f(s)) + z, 0, 255).astype(np.uint8)
    return q(x1, p.low_scale, p.low_zero_point), q(x2, p.high_scale, p.high_zero_point)


@pytest.mark.parametrize("kind", ["softmax", "gelu"])
def test_codes_are_bit_exact_on_adversarial_inputs(kind):
    """ORT's codes of both branches equal the reference's bit for bit on the adversarial values;
    the dequantized sum equals twin(x) (a coarse value comes back within half a coarse step,
    never shifted by the split); the fused (integer MatMul) session agrees with the plain one."""
    import onnx

    p = _params(kind)
    x = gs.Variable("x", np.float32, ["n", 4, 4])
    a = gs.Variable("a", np.float32, ["n", 4, 4])
    y = gs.Variable("y", np.float32, ["n", 4, 8])
    graph = gs.Graph(nodes=[gs.Node("Identity", name="id", inputs=[x], outputs=[a]),
                            gs.Node("MatMul", name="av", inputs=[a, gs.Constant("v", V[0])],
                                    outputs=[y])], inputs=[x], outputs=[y], opset=20)
    assert TwinQDQ().run(graph, PassContext(twin_qparams={"a": p})).applied == 1
    model = to_model(graph)
    qs = [n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(q, onnx.TensorProto.UINT8, None)
                              for q in qs)
    xs = _adversarial(p)
    got = make_session(probe, optimize=False).run(None, {"x": xs})
    want = _codes(xs, p)
    by_branch = {("low" if "/low/" in q else "high"): c for q, c in zip(qs, got[1:], strict=True)}
    np.testing.assert_array_equal(by_branch["low"], want[0])
    np.testing.assert_array_equal(by_branch["high"], want[1])
    deq = ((want[0].astype(np.float64) - p.low_zero_point) * np.float32(p.low_scale)
           + (want[1].astype(np.float64) - p.high_zero_point) * np.float32(p.high_scale))
    k = 2 ** (p.bits - 1) - 1
    inside = (xs <= k * p.high_scale) & (xs >= (-k * p.low_scale if kind == "gelu" else 0))
    step = np.where(xs < (p.threshold if kind == "softmax" else 0), p.low_scale, p.high_scale)
    slack = 1e-6 * np.abs(xs) + 1e-12  # a float32 midpoint is rounded itself
    assert np.all((np.abs(deq - xs) <= step / 2 + slack)[inside])
    np.testing.assert_allclose(got[0], deq.astype(np.float32) @ V[0], rtol=1e-5, atol=1e-5)
    fused = make_session(model).run(None, {"x": xs})[0]
    np.testing.assert_allclose(fused, got[0], rtol=1e-5, atol=1e-5)
