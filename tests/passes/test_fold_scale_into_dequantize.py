"""fold-scale-into-dequantize: the scores' constant scale moves into K's DequantizeLinear."""

from __future__ import annotations

import numpy as np
from qdq_graphs import Builder, op_types, run_model

from onnxvq.core.pipeline import Pipeline
from onnxvq.passes.fold_scale_into_dequantize import FoldScaleIntoDequantize


def _scores(c: float, extra_reader: bool = False):
    b = Builder()
    q, k = b.qdq("q", 0.05), b.qdq("k", 0.04, 120)
    s = b.op("MatMul", q, k)[0]
    y = b.op("Mul", s, b.const(np.float32(c)))[0]
    outs = {y: [2, 3, 5, 5]}
    if extra_reader:
        outs[s] = [2, 3, 5, 5]
    return b.model({"q": [2, 3, 5, 8], "k": [2, 3, 8, 5]}, outs)


def test_folds_and_matches():
    model = _scores(0.125)
    out, report = Pipeline((FoldScaleIntoDequantize(),)).run(model, numeric="none")
    assert report.result("fold-scale-into-dequantize").applied == 1
    assert op_types(out).count("Mul") == 0 and op_types(out).count("DequantizeLinear") == 2
    rng = np.random.default_rng(0)
    feeds = {"q": rng.standard_normal((2, 3, 5, 8)).astype(np.float32),
             "k": rng.standard_normal((2, 3, 8, 5)).astype(np.float32)}
    a, b = run_model(model, feeds)[0], run_model(out, feeds)[0]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_refuses():
    for model, reason in ((_scores(-0.5), "not positive"), (_scores(0.1, True), "read elsewhere")):
        _, report = Pipeline((FoldScaleIntoDequantize(),)).run(model, numeric="none")
        r = report.result("fold-scale-into-dequantize")
        assert r.applied == 0 and reason in r.refused[0][1]
