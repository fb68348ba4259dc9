"""fuse-add-layernorm-quantize: residual Add + LayerNorm + its QuantizeLinear become one
AddLayerNormQuantize writing the sum (bit-exact) and the codes."""

from __future__ import annotations

import numpy as np
import pytest
from qdq_graphs import Builder, op_types, run_model

from onnxvq.core.pipeline import Pipeline
from onnxvq.core.runtime import make_session
from onnxvq.passes.fuse_add_layernorm_quantize import FuseAddLayerNormQuantize

SHAPE = [4, 10, 64]
FUSE = Pipeline((FuseAddLayerNormQuantize(),), infer_shapes=True)


def _block(*, other: str = "linear", read_float: bool = False, per_axis: bool = False,
           shape_reader: bool = False, zp: int = 128):
    b = Builder()
    x = b.op("Identity", "x")[0]
    if other == "linear":  # the residual branch: a quantized Linear of x
        y = b.linear(b.qdq(x, 0.03), 64, 64)
    elif other == "const":  # a position embedding, repeated over the batch
        y = b.const(b.rng.standard_normal((10, 64)).astype(np.float32), "pos")
    else:  # [4, 1, 64]: broadcasts over the tokens, not only over leading dimensions
        y = b.op("ReduceMean", x, axes=[1], keepdims=1)[0]
    r = b.op("Add", x, y)[0]
    gamma = b.const((1 + 0.3 * b.rng.standard_normal(64)).astype(np.float32), "g")
    beta = b.const((0.2 * b.rng.standard_normal(64)).astype(np.float32), "be")
    ln = b.op("LayerNormalization", r, gamma, beta, axis=-1, epsilon=1e-6)[0]
    if per_axis:
        s, z = b.const(np.full(64, 0.04, np.float32), "s"), b.const(np.full(64, zp, np.uint8))
        lq = b.op("DequantizeLinear", b.op("QuantizeLinear", ln, s, z, axis=2)[0], s, z,
                  axis=2)[0]
    else:
        lq = b.qdq(ln, 0.04, zp)
    out = b.linear(lq, 64, 32)
    outs = {out: SHAPE[:2] + [32], r: SHAPE}
    if read_float:
        outs[ln] = SHAPE
    if shape_reader:
        outs[b.op("Cast", b.op("Shape", ln)[0], to=1)[0]] = [3]
    return b.model({"x": SHAPE}, outs)


def _feeds():
    return {"x": 2 * np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)}


@pytest.mark.parametrize("other", ["linear", "const"])
def test_rewrites_sum_exact_codes_within_one(other):
    model = _block(other=other, shape_reader=True)
    out, report = FUSE.run(model, numeric="none")
    assert report.result("fuse-add-layernorm-quantize").applied == 1
    before, after = op_types(model), op_types(out)
    assert after.count("AddLayerNormQuantize") == 1 and "LayerNormalization" not in after
    assert after.count("QuantizeLinear") == before.count("QuantizeLinear") - 1
    assert after.count("Add") == before.count("Add") - 1 and after.count("Shape") == 1
    feeds = _feeds()
    want = run_model(model, feeds)
    got = make_session(out).run(None, feeds)
    np.testing.assert_array_equal(got[1], want[1])  # the residual sum, bit for bit
    np.testing.assert_array_equal(got[2], want[2])  # Shape now reads the codes: same shape
    # codes may differ by one at a rounding midpoint (float32 vs ORT's LayerNorm): rare
    step_err = np.abs(got[0] - want[0]).max()
    assert step_err <= 0.04 * 0.02 * 64 and (got[0] != want[0]).mean() < 0.05
    # the local function is the unfused graph: ORT inlines it and computes the same outputs
    fn = make_session(out, custom_ops=False).run(None, feeds)
    for f, w in zip(fn, want, strict=True):
        np.testing.assert_array_equal(f, w)


def test_int8_codes():
    b = Builder()
    r = b.op("Add", "x", b.const(np.ones(64, np.float32)))[0]
    ln = b.op("LayerNormalization", r, b.const(np.ones(64, np.float32)), axis=-1)[0]
    s, z = b.const(np.float32(0.03), "s"), b.const(np.int8(-3), "zp")
    y = b.op("DequantizeLinear", b.op("QuantizeLinear", ln, s, z)[0], s, z)[0]
    model = b.model({"x": SHAPE}, {y: SHAPE})
    out, report = FUSE.run(model, numeric="none")
    assert report.result("fuse-add-layernorm-quantize").applied == 1
    feeds = _feeds()
    a, g = run_model(model, feeds)[0], make_session(out).run(None, feeds)[0]
    assert np.abs(a - g).max() <= 0.03 + 1e-6 and (a != g).mean() < 1e-3


@pytest.mark.parametrize(("kwargs", "reason"), [
    (dict(read_float=True), "read in float"),
    (dict(per_axis=True), "per-axis"),
    (dict(other="tokens"), "broadcast"),
])
def test_refusals(kwargs, reason):
    out, report = FUSE.run(_block(**kwargs), numeric="none")
    r = report.result("fuse-add-layernorm-quantize")
    assert r.applied == 0 and reason in r.refused[0][1]
    assert "AddLayerNormQuantize" not in op_types(out)


def test_layernorm_without_add_is_not_matched():
    b = Builder()
    ln = b.op("LayerNormalization", "x", b.const(np.ones(64, np.float32)), axis=-1)[0]
    y = b.qdq(ln, 0.03)
    out, report = FUSE.run(b.model({"x": SHAPE}, {y: SHAPE}), numeric="none")
    r = report.result("fuse-add-layernorm-quantize")
    assert r.applied == 0 and not r.refused
