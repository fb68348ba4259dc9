"""fold-scale-into-quantize: Mul(c) before a QuantizeLinear goes into its scale."""

from __future__ import annotations

import numpy as np
from qdq_graphs import Builder, op_types, run_model

from onnxvq.core.pipeline import Pipeline
from onnxvq.passes.fold_scale_into_quantize import FoldScaleIntoQuantize


def _rescale(c: float, read_mul: bool = False):
    """int sums ─Cast─Mul(c)─Q─DQ, as after LogIntMatMul."""
    b = Builder()
    f = b.op("Cast", "acc", to=1)[0]
    m = b.op("Mul", f, b.const(np.float32(c)))[0]
    y = b.qdq(m, 0.02, 128)
    outs = {y: [4, 6, 64]}
    if read_mul:
        outs[m] = [4, 6, 64]
    model = b.model({"acc": [4, 6, 64]}, outs)
    model.graph.input[0].type.tensor_type.elem_type = 7  # int64 sums
    return model


def test_folds_with_at_most_one_code_moved():
    c = 0.0123 * 2.0**-15
    model = _rescale(c)
    out, report = Pipeline((FoldScaleIntoQuantize(),)).run(model, numeric="none")
    assert report.result("fold-scale-into-quantize").applied == 1
    assert "Mul" not in op_types(out)
    acc = np.random.default_rng(6).integers(-(2**22), 2**22, (4, 6, 64)).astype(np.int64)
    a, b = run_model(model, {"acc": acc})[0], run_model(out, {"acc": acc})[0]
    step = 0.02
    assert np.abs(a - b).max() <= step * 1.0001
    assert np.mean(a != b) < 1e-3


def test_refuses():
    for model, reason in ((_rescale(-1.0), "not positive"), (_rescale(0.5, True), "elsewhere")):
        _, report = Pipeline((FoldScaleIntoQuantize(),)).run(model, numeric="none")
        r = report.result("fold-scale-into-quantize")
        assert r.applied == 0 and reason in r.refused[0][1]
