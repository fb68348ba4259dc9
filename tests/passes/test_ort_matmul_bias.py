"""ort-matmul-bias: DQ·DQ MatMul + bias Add becomes one MatMulIntegerToFloat with its bias."""

from __future__ import annotations

import numpy as np
from qdq_graphs import Builder, op_types, run_model, shipped

from onnxvq.core.pipeline import Pipeline
from onnxvq.passes.ort_matmul_bias import OrtMatMulBias


def _linear(read_mid: bool = False):
    b = Builder()
    x = b.qdq("x", 0.03, 100)
    mm = b.op("MatMul", x, b.qweight(32, 48))[0]
    y = b.op("Add", mm, b.const(b.rng.standard_normal(48).astype(np.float32)))[0]
    outs = {y: [3, 7, 48], mm: [3, 7, 48]} if read_mid else {y: [3, 7, 48]}
    return b.model({"x": [3, 7, 32]}, outs)


def test_fuses_bias_and_keeps_output():
    model = _linear()
    out, report = Pipeline((OrtMatMulBias(),)).run(model, numeric="none")
    assert report.result("ort-matmul-bias").applied == 1
    ops = op_types(out)
    assert ops == ["QuantizeLinear", "MatMulIntegerToFloat"], ops
    assert out.graph.output[0].name == model.graph.output[0].name
    feeds = {"x": np.random.default_rng(2).standard_normal((3, 7, 32)).astype(np.float32)}
    a, b = run_model(shipped(model), feeds)[0], run_model(shipped(out), feeds)[0]
    # the same int32 products; only the float rescale/bias rounding order differs
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_refuses_when_matmul_output_is_read():
    _, report = Pipeline((OrtMatMulBias(),)).run(_linear(read_mid=True), numeric="none")
    r = report.result("ort-matmul-bias")
    assert r.applied == 0 and "read elsewhere" in r.refused[0][1]
