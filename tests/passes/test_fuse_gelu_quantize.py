"""fuse-gelu-quantize: erf GELU + its QuantizeLinear become one GeluQuantizeLinear (bias folded)."""

from __future__ import annotations

import numpy as np
import pytest
from qdq_graphs import Builder, op_types, run_model, shipped

from onnxvq.core.metrics import sqnr
from onnxvq.core.pipeline import Pipeline
from onnxvq.core.runtime import make_session
from onnxvq.passes.fuse_gelu_quantize import FuseGeluQuantize

SHAPE = [4, 10, 64]
FUSE = Pipeline((FuseGeluQuantize(),), infer_shapes=True)


def _mlp(*, bias: bool = True, read_float: bool = False, zp: int = 128, two_q: bool = False,
         per_axis: bool = False, dims: list | None = None):
    b = Builder()
    x = b.qdq("x", 0.03)
    g = b.gelu_erf(b.linear(x, 64, 256, bias=bias))
    if per_axis:
        s = b.const(np.full(256, 0.05, np.float32), "s")
        z = b.const(np.full(256, zp, np.uint8), "zp")
        gq = b.op("DequantizeLinear", b.op("QuantizeLinear", g, s, z, axis=2)[0], s, z, axis=2)[0]
    else:
        gq = b.qdq(g, 0.05, zp)
    y = b.linear(gq, 256, 64)
    outs = {y: dims or SHAPE}
    if read_float:
        outs[g] = SHAPE[:2] + [256]
    if two_q:
        outs[b.qdq(g, 0.07)] = SHAPE[:2] + [256]
    return b.model({"x": dims or SHAPE}, outs)


def _feeds():
    return {"x": np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)}


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_rewrites_and_keeps_the_codes(bias):
    model = _mlp(bias=bias)
    out, report = FUSE.run(model, numeric="none")
    assert report.result("fuse-gelu-quantize").applied == 1
    before, after = op_types(model), op_types(out)
    assert after.count("GeluQuantizeLinear") == 1 and "Erf" not in after
    assert after.count("QuantizeLinear") == before.count("QuantizeLinear") - 1
    assert after.count("Add") == before.count("Add") - 1 - int(bias)  # erf's +1 and the bias
    feeds = _feeds()
    a, out = run_model(shipped(model), feeds)[0], shipped(out)
    # the local function is the unfused graph itself: the same outputs bit for bit
    np.testing.assert_array_equal(make_session(out, custom_ops=False).run(None, feeds)[0], a)
    # the native kernel's erf may move a code by one within ~1e-6 of a midpoint (rare)
    assert sqnr(a, make_session(out).run(None, feeds)[0]) > 60


def test_int8_zero_point_gives_int8_codes():
    b = Builder()
    x = b.qdq("x", 0.03)
    g = b.gelu_erf(b.linear(x, 64, 256))
    s, z = b.const(np.float32(0.05), "s"), b.const(np.int8(-100), "zp")
    y = b.op("DequantizeLinear", b.op("QuantizeLinear", g, s, z)[0], s, z)[0]
    model = b.model({"x": SHAPE}, {y: SHAPE[:2] + [256]})
    out, report = FUSE.run(model, numeric="none")
    assert report.result("fuse-gelu-quantize").applied == 1
    feeds = _feeds()
    a = run_model(shipped(model), feeds)[0]
    got = make_session(shipped(out)).run(None, feeds)[0]
    assert np.abs(got - a).max() <= 0.05 + 1e-6 and (got != a).mean() < 1e-3


@pytest.mark.parametrize(("kwargs", "reason"), [
    (dict(read_float=True), "read in float"),
    (dict(two_q=True), "read in float"),
    (dict(per_axis=True), "per-axis"),
    (dict(bias=False, dims=["n", 10, 64]), None),
])
def test_refusals(kwargs, reason):
    model = _mlp(**kwargs)
    out, report = FUSE.run(model, numeric="none")
    r = report.result("fuse-gelu-quantize")
    if reason is None:  # a symbolic batch is fine: only the last dimension matters
        assert r.applied == 1
        return
    assert r.applied == 0 and reason in r.refused[0][1]
    assert "GeluQuantizeLinear" not in op_types(out)


def test_refuses_unknown_last_dimension_without_bias():
    # without shape inference the fc1 output's shape is unknown: the zero bias needs its length
    model = _mlp(bias=False)
    out, report = Pipeline((FuseGeluQuantize(),)).run(model, numeric="none")
    r = report.result("fuse-gelu-quantize")
    assert r.applied == 0 and "last dimension is unknown" in r.refused[0][1]
    # with a bias its length says it
    out, report = Pipeline((FuseGeluQuantize(),)).run(_mlp(), numeric="none")
    assert report.result("fuse-gelu-quantize").applied == 1
