"""Fisher weights from forward runs only: right on a model where they are known, never ~0."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxvq.calibrate.collect import expose
from onnxvq.calibrate.fisher import fisher_weights, normalised
from onnxvq.core.config import QuantConfig
from onnxvq.core.runtime import make_session
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.quantizer.run import quantize

T, C, K = 4, 6, 5


def _pooled_linear(w: np.ndarray):
    """x [N, T, C] -> Relu -> o -> MatMul W -> ReduceMean over tokens -> logits [N, K]."""
    nodes = [helper.make_node("Relu", ["x"], ["o"]),
             helper.make_node("MatMul", ["o", "W"], ["y"]),
             helper.make_node("ReduceMean", ["y"], ["logits"], axes=[1], keepdims=0)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     ["N", T, C])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", K])],
                          initializer=[numpy_helper.from_array(w, "W")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_fisher_matches_the_analytic_value():
    """d logits / d o[t, c] = W[c] / T, so the diagonal Fisher of o is W[c]ᵀ (diag p - ppᵀ) W[c]
    / T² for every token; the estimate per token group is within 25 % of it on each sample."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((C, K)).astype(np.float32)
    x = np.abs(rng.standard_normal((2, T, C))).astype(np.float32) + 0.5  # Relu is the identity
    model = _pooled_linear(w)
    o = x
    found = fisher_weights(model, ["o"], {"x": x, "o": o}, samples=2, groups=T, probes=256)["o"]
    raw = found.raw
    assert found.axis == 1 and found.size == T
    want = []
    for s in range(2):
        z = (o[s] @ w).mean(0)
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        m = np.diag(p) - np.outer(p, p)
        want.append(np.mean([w[c] @ m @ w[c] for c in range(C)]) / T ** 2)
    assert raw.shape == (T,)
    np.testing.assert_allclose(raw, np.mean(want), rtol=0.25)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_vit(TinyViTConfig(depth=2))


def test_sensitivity_weights_are_not_all_zero(tiny):
    """PTQ4ViT's reference takes its gradient between two identical networks, so its weights are
    ~0. Here: every group's Fisher is positive, the same with half the perturbation (a second-
    order quantity, not rounding noise), and the weights differ between groups."""
    model = quantize(tiny, None, QuantConfig(calib_size=2, batch_size=2)).canonical
    names = [n.output[0] for n in model.graph.node if n.op_type == "MatMul"][:6]
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    ref = dict(zip(names, make_session(expose(model, names)).run(
        names, {model.graph.input[0].name: x}), strict=True))
    ref[model.graph.input[0].name] = x
    a = fisher_weights(model, names, ref, samples=4, probes=4, eps=0.05)
    b = fisher_weights(model, names, ref, samples=4, probes=4, eps=0.025)
    assert set(a) == set(names)
    for t in names:
        assert np.all(a[t].raw > 0), t
        np.testing.assert_allclose(a[t].raw, b[t].raw, rtol=0.1)
    w = normalised(a)
    assert all(abs(float(v.mean()) - 1) < 1e-5 for v in w.values())
    assert max(float(v.max() / v.min()) for v in w.values()) > 2


def test_twin_with_fisher_records_its_weights(tiny):
    cfg = QuantConfig(method="twin", fisher=True, calib_size=16, batch_size=8, w_bits=4,
                      a_bits=4, search_samples=8)
    found = quantize(tiny, None, cfg).calibration["search"]
    assert len(found["fisher"]) == 4  # A·V and fc2 of both blocks
    assert all(f["raw_mean"] > 0 and f["max_weight"] > f["min_weight"]
               for f in found["fisher"].values())
