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
