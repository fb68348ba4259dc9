"""PTQ4ViT twin-uniform quantizers: the reference's fault fixed, the two-branch deployment exact."""

from __future__ import annotations

import numpy as np
import pytest

from onnxvq.calibrate.collect import expose
from onnxvq.calibrate.twin import softmax_threshold, twin_gelu, twin_softmax
from onnxvq.core.config import QuantConfig
from onnxvq.core.runtime import make_session
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.quantizer.run import quantize

LOW = dict(calib_size=16, batch_size=8, w_bits=4, a_bits=4, search_samples=8)


def test_large_range_value_dequantizes_to_itself():
    """PTQ4ViT's reference adds the split value to every large-range value; here a value in the
    coarse range comes back within half a coarse step, and one in the fine range within half a
    fine step (adversarial points: 0, the split itself and its neighbours, 1)."""
    d2 = 1.0 / 7
    d1 = d2 / 8
    t = softmax_threshold(d1, 4)
    x = np.array([0.0, d1 / 2, t - 1e-7, t, t + 1e-7, 0.3, 0.5, 0.77, 1.0])
    got = twin_softmax(x, d1, d2, 4)
    fine = x < t
    assert np.all(np.abs(got - x)[fine] <= d1 / 2 + 1e-12)
    assert np.all(np.abs(got - x)[~fine] <= d2 / 2 + 1e-12)
    assert got[0] == 0.0 and got[-1] == pytest.approx(1.0)
    assert len(np.unique(np.round(got[fine] / d1))) > 1  # the fine range is used


def test_gelu_twin_keeps_negative_and_positive_steps():
    dn, dp = 0.17 / 7, 3.0 / 7
    x = np.array([-0.17, -0.05, -1e-9, 0.0, 0.2, 1.0, 3.0, 10.0])
    got = twin_gelu(x, dn, dp, 4)
    assert np.all(np.abs(got - x)[x < 0] <= dn / 2 + 1e-12)
    assert np.all(np.abs(got - x)[(x >= 0) & (x <= 3)] <= dp / 2 + 1e-12)
    assert got[-1] == pytest.approx(3.0)  # clipped at k * dp
    assert got[1] == pytest.approx(-2 * dn)  # a uniform 4-bit step over [-0.17, 3] would give 0


@pytest.fixture(scope="module")
def twin_result():
    model = build_tiny_vit(TinyViTConfig(depth=2))
    return model, quantize(model, None, QuantConfig(method="twin", **LOW))


def test_twin_method_finds_power_of_two_steps(twin_result):
    _, result = twin_result
    twin = result.calibration["search"]["twin"]
    kinds = sorted(p["kind"] for p in twin.values())
    assert kinds == ["gelu", "gelu", "softmax", "softmax"]
    for p in twin.values():
        if p["kind"] == "softmax":
            ratio = p["high_scale"] / p["low_scale"]
            assert ratio == pytest.approx(2.0 ** round(np.log2(ratio)), rel=1e-6)
        else:
            assert p["low_zero_point"] == 7 and p["high_zero_point"] == 0


def test_two_branch_deployment_equals_the_reference(twin_result):
    """The deployed graph's A·V and fc2 outputs equal twin(x) @ B computed in numpy from the same
    graph's x and dequantized operand B (unoptimised session: exposing a fused MatMul's output
    would read ORT's requantized tensor), and the optimised model computes the same logits."""
    _, result = twin_result
    x = np.random.default_rng(3).standard_normal((4, 3, 32, 32)).astype(np.float32)
    model = result.model
    nodes = {n.name: n for n in model.graph.node}
    for t, p in result.calibration["search"]["twin"].items():
        low = nodes[f"{p['consumer']}/twin_low"]
        operand, out = low.input[1], nodes[f"{p['consumer']}/twin_sum"].output[0]
        names = [t, operand, out]
        sess = make_session(expose(model, names), optimize=False)
        got = dict(zip(names, sess.run(names, {model.graph.input[0].name: x}), strict=True))
        fn = twin_softmax if p["kind"] == "softmax" else twin_gelu
        want = fn(got[t], p["low_scale"], p["high_scale"], 4) @ got[operand].astype(np.float64)
        np.testing.assert_allclose(got[out], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    feeds = {model.graph.input[0].name: x}
    fused, plain = (make_session(model, optimize=o).run(None, feeds)[0] for o in (True, False))
    np.testing.assert_allclose(fused, plain, atol=1e-4)
