"""patch-conv-to-matmul: a quantized patch Conv + flatten + transpose becomes an int8 MatMul on
re-laid-out uint8 codes, with the same outputs (the int32 products are identical)."""

from __future__ import annotations

import numpy as np
from qdq_graphs import Builder, op_types, run_model, shipped

from onnxvq.core.pipeline import Pipeline
from onnxvq.passes.ort_matmul_bias import OrtMatMulBias
from onnxvq.passes.patch_conv_to_matmul import PatchConvToMatMul


def _patch_embed(computed_shape: bool, stride: int = 8):
    b = Builder()
    x = b.qdq("x", 0.02, 120)
    w = b.rng.integers(-127, 128, (16, 3, 8, 8)).astype(np.int8)
    ws = (b.rng.random(16) * 0.01 + 0.001).astype(np.float32)
    wd = b.op("DequantizeLinear", b.const(w), b.const(ws), b.const(np.zeros(16, np.int8)), axis=0)
    bq = b.rng.integers(-5000, 5000, 16).astype(np.int32)
    bd = b.op("DequantizeLinear", b.const(bq), b.const((ws * 0.02).astype(np.float32)),
              b.const(np.zeros(16, np.int32)), axis=0)
    y = b.op("Conv", x, wd[0], bd[0], kernel_shape=[8, 8], strides=[stride, stride])[0]
    if computed_shape:  # TorchScript's flatten(2): Concat(Slice(Shape(y), 0, 2), [-1])
        sl = b.op("Slice", b.op("Shape", y)[0], b.const(np.array([0])), b.const(np.array([2])),
                  b.const(np.array([0])))[0]
        target = b.op("Concat", sl, b.const(np.array([-1])), axis=0)[0]
    else:
        target = b.const(np.array([0, 16, -1]))
    t = b.op("Transpose", b.op("Reshape", y, target)[0], perm=[0, 2, 1])[0]
    n = (32 - 8) // stride + 1
    return b.model({"x": [2, 3, 32, 32]}, {t: [2, n * n, 16]})


def test_rewrites_to_int8_matmul_with_same_outputs():
    feeds = {"x": np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)}
    for computed in (False, True):
        model = _patch_embed(computed)
        out, report = Pipeline((PatchConvToMatMul(), OrtMatMulBias())).run(model, numeric="none")
        assert report.result("patch-conv-to-matmul").applied == 1
        ops = op_types(out)
        assert "Conv" not in ops and ops.count("MatMulIntegerToFloat") == 1, ops
        a, b = run_model(shipped(model), feeds)[0], run_model(shipped(out), feeds)[0]
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_refuses_overlapping_patches():
    _, report = Pipeline((PatchConvToMatMul(),)).run(_patch_embed(False, stride=4),
                                                      numeric="none")
    r = report.result("patch-conv-to-matmul")
    assert r.applied == 0 and "overlap" in r.refused[0][1]
