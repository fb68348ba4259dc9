"""ort-fast-gelu: erf GELU feeding a QuantizeLinear becomes FastGelu with the bias folded in."""

from __future__ import annotations

import numpy as np
from qdq_graphs import Builder, op_types, run_model, shipped

from onnxvq.core.metrics import sqnr
from onnxvq.core.pipeline import Pipeline
from onnxvq.passes.ort_fast_gelu import OrtFastGelu


def _mlp(read_float: bool = False, step: float = 0.05):
    b = Builder()
    x = b.qdq("x", 0.03)
    g = b.gelu_erf(b.linear(x, 64, 256))
    y = b.linear(b.qdq(g, step), 256, 64)
    outs = {y: [4, 10, 64], g: [4, 10, 256]} if read_float else {y: [4, 10, 64]}
    return b.model({"x": [4, 10, 64]}, outs)


def test_rewrites_and_stays_within_a_step():
    model = _mlp()
    out, report = Pipeline((OrtFastGelu(),)).run(model, numeric="none")
    assert report.result("ort-fast-gelu").applied == 1
    ops = op_types(out)
    assert ops.count("FastGelu") == 1 and "Erf" not in ops
    assert ops.count("Add") == 1  # the bias went into FastGelu; fc2's bias Add stays
    feeds = {"x": np.random.default_rng(1).standard_normal((4, 10, 64)).astype(np.float32)}
    a, b = run_model(shipped(model), feeds)[0], run_model(shipped(out), feeds)[0]
    # a GELU code moves by at most one step, rarely: the outputs stay SQNR > 35 dB apart
    db = sqnr(a, b)
    assert db > 35, db


def test_refuses_float_reader_and_fine_step():
    for model, reason in ((_mlp(read_float=True), "read in float"), (_mlp(step=1e-3), "too fine")):
        out, report = Pipeline((OrtFastGelu(),)).run(model, numeric="none")
        r = report.result("ort-fast-gelu")
        assert r.applied == 0 and reason in r.refused[0][1]
        assert "FastGelu" not in op_types(out)
