"""quantize-weights: int8 per-output-channel weights, int32 Gemm/Conv biases, typed records."""

from __future__ import annotations

import warnings

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import helper, numpy_helper
from passtools import cosine, make_model, ops, quant_context, reasons, run_pass

from onnxvq.core.config import QuantConfig
from onnxvq.core.edit import qparam_constants
from onnxvq.core.errors import ValidationError
from onnxvq.core.params import ActivationQParams, QuantPlan, WeightQParams, WeightSite
from onnxvq.core.pipeline import PassContext
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.passes import quantize_weights
from onnxvq.passes.quantize_weights import QuantizeWeights

RNG = np.random.default_rng(0)


def test_tiny_vit_weights():
    canonical, ctx = quant_context(build_tiny_vit(TinyViTConfig()), QuantConfig(calib_size=8))
    out, res, _ = run_pass(QuantizeWeights(), canonical, ctx, numeric="none")
    sites = ctx.plan.weights
    assert res.applied == len(sites) == 1 + 2 * 4 + 1  # patch Conv, 4 linears a block, head
    assert res.counts["int32_bias"] == 2  # patch Conv and head Gemm; MatMul biases are Adds
    assert ops(out)["DequantizeLinear"] == len(sites) + 2
    assert [r.node for r in res.records] == [s.node for s in sites]
    assert all(isinstance(r, WeightQParams) and len(r.scale) > 1 for r in res.records)
    assert cosine(canonical, out) > 0.999


def _one(op: str, w: np.ndarray, **attrs):
    node = helper.make_node(op, ["x", "w"], ["y"], name="n", **attrs)
    x_shape, y_shape = {"MatMul": ([2, 8], [2, 4] if w.ndim == 2 else [3, 2, 4]),
                        "Gemm": ([8, 2] if attrs.get("transA") else [2, 8], [2, 4]),
                        "Conv": ([1, 4, 5, 5], [1, 4, 3, 3])}[op]
    return make_model([node], [("x", x_shape)], [("y", y_shape)], {"w": w})


CASES = [
    ("Gemm", RNG.standard_normal((8, 4)), dict(transA=1), "Gemm with transA"),
    ("Gemm", RNG.standard_normal((8, 4)), dict(alpha=0.5), "Gemm with alpha/beta != 1"),
    ("MatMul", RNG.standard_normal((3, 8, 4)), {}, "MatMul weight is not 2-D"),
]


@pytest.mark.parametrize(("op", "w", "attrs", "reason"), CASES, ids=[c[3][:12] for c in CASES])
def test_refusals(op, w, attrs, reason):
    model = _one(op, w.astype(np.float32), **attrs)
    axis = 0 if op == "Conv" else 1
    plan = QuantPlan((), (WeightSite("n", op, "w", axis, 8),), ())
    out, res, _ = run_pass(QuantizeWeights(), model, PassContext(plan=plan), numeric="none")
    assert res.applied == 0 and reasons(res) == [reason] and res.records == []
    assert ops(out) == ops(model)
    node = gs.import_onnx(model).nodes[0]
    assert quantize_weights.refuse(node) == reason  # what placement asks before planning


def test_gemm_bias_becomes_int32_with_the_input_scale():
    w, b = RNG.standard_normal((8, 4)).astype(np.float32), RNG.standard_normal(4).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="n")
    model = make_model([node], [("x", [2, 8])], [("y", [2, 4])], {"w": w, "b": b})
    qp = {"x": ActivationQParams(0.02, 128, "uint8", 8, (-2.5, 2.6), "linear")}
    ctx = PassContext(plan=QuantPlan((), (WeightSite("n", "Gemm", "w", 1, 8),), ()),
                      activation_qparams=qp)
    out, res, numeric = run_pass(QuantizeWeights(), model, ctx, atol=0.05)
    assert res.applied == 1 and res.counts["int32_bias"] == 1
    bias = next(i for i in out.graph.initializer if i.name == "n/B/quantized")
    assert bias.data_type == 6 and numeric.max_abs_diff <= 0.05  # INT32


def test_a_bias_too_large_for_its_weight_scale_raises_the_scale_not_wraps():
    """timm levit_conv_128s: BatchNorm folded with a near-zero gain leaves output channels whose
    weights are ~1e-6 next to a bias of 0.02, so |b|/(s_x·s_w) = 3e10 > 2^31: the float32 clip
    rounded to 2^31 and the int32 cast wrapped it to -2^31 (the bias flipped sign, numpy's
    "invalid value encountered in cast" the only sign). Now s_w is raised until the bias fits."""
    w = RNG.standard_normal((8, 4)).astype(np.float32)
    w[:, 1] *= 1e-6  # channel 1: tiny weights, ordinary bias
    b = np.array([0.5, 0.9, -0.3, 0.1], np.float32)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="n")
    model = make_model([node], [("x", [2, 8])], [("y", [2, 4])], {"w": w, "b": b})
    qp = {"x": ActivationQParams(0.02, 128, "uint8", 8, (-2.5, 2.6), "linear")}
    ctx = PassContext(plan=QuantPlan((), (WeightSite("n", "Gemm", "w", 1, 8),), ()),
                      activation_qparams=qp)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out, res, numeric = run_pass(QuantizeWeights(), model, ctx, atol=0.05)
    init = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    codes, bias_scale = init["n/B/quantized"], init["n/B/scale"]
    assert np.abs(codes).max() <= quantize_weights.BIAS_LIMIT
    # every bias within half its step (before: channel 1 came back as -0.9)
    assert (np.abs(codes * bias_scale.astype(np.float64) - b) <= 0.5001 * bias_scale).all()
    w_scale = np.array(res.records[0].scale, np.float32)
    assert w_scale[1] == pytest.approx(0.9 / (0.02 * quantize_weights.BIAS_LIMIT), rel=1e-5)
    np.testing.assert_array_equal(w_scale[[0, 2, 3]],  # the others keep max|w_c| / 127
                                  quantize_weights.weight_scales(w, 1, 8)[[0, 2, 3]])
    assert numeric.max_abs_diff <= 0.05


@pytest.mark.parametrize("role", ["weight", "bias"])
def test_nan_or_inf_weights_and_biases_are_refused_by_name(role):
    w, b = RNG.standard_normal((8, 4)).astype(np.float32), np.ones(4, np.float32)
    (w if role == "weight" else b)[2] = np.nan if role == "weight" else np.inf
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="n")
    model = make_model([node], [("x", [2, 8])], [("y", [2, 4])], {"w": w, "b": b})
    plan = QuantPlan((), (WeightSite("n", "Gemm", "w", 1, 8),), ())
    out, res, _ = run_pass(QuantizeWeights(), model, PassContext(plan=plan), numeric="none")
    name = "w" if role == "weight" else "b"
    assert res.applied == 0 and reasons(res) == [f"{role} {name!r} has NaN/Inf values"]
    assert ops(out) == ops(model)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 0.0, -1.0, 1e-40])
def test_a_scale_that_is_not_finite_positive_normal_is_a_validation_error(bad):
    with pytest.raises(ValidationError, match=r"'site/scale' is not a finite positive float32"):
        qparam_constants("site", np.array([0.1, bad], np.float32), np.zeros(2, np.uint8), "uint8")
    scale, _ = qparam_constants("site", np.float32(1.2e-38), np.uint8(0), "uint8")  # normal: ok
    assert scale.values == np.float32(1.2e-38)
