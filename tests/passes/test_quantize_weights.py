"""quantize-weights: int8 per-output-channel weights, int32 Gemm/Conv biases, typed records."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import helper
from passtools import cosine, make_model, ops, quant_context, reasons, run_pass

from onnxvq.core.config import QuantConfig
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
