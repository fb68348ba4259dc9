"""fuse-add-mul-quantize: Add → Mul(2^-alpha_c) → QuantizeLinear (the --pts input of an
IntLayerNorm) becomes one AddMulQuantizeLinear, bit-exact with the unfused graph."""

from __future__ import annotations

import numpy as np
import pytest
from qdq_graphs import Builder, op_types, run_model

from onnxvq.core.pipeline import Pipeline
from onnxvq.core.runtime import make_session
from onnxvq.passes.fuse_add_mul_quantize import FuseAddMulQuantize

SHAPE = [4, 10, 64]
FUSE = Pipeline((FuseAddMulQuantize(),), infer_shapes=True)


def _pts_input(*, other: str = "x2", m_shape=(64,), per_axis: bool = False,
               mul_read: bool = False, zp_dtype=np.uint8):
    b = Builder()
    y = (b.const(b.rng.standard_normal((10, 64)).astype(np.float32), "pos")
         if other == "const" else "x2")
    r = b.op("Add", "x", y)[0]
    m = (2.0 ** -b.rng.integers(0, 4, m_shape)).astype(np.float32)
    t = b.op("Mul", r, b.const(m, "m"))[0]
    if per_axis:
        s, z = b.const(np.full(64, 0.05, np.float32), "s"), b.const(np.zeros(64, np.uint8))
        q = b.op("QuantizeLinear", t, s, z, axis=2)[0]
    else:
        s, z = b.const(np.float32(0.0371), "s"), b.const(zp_dtype(3), "zp")
        q = b.op("QuantizeLinear", t, s, z)[0]
    outs = {b.op("Cast", q, to=1)[0]: SHAPE, r: SHAPE}
    if mul_read:
        outs[t] = SHAPE
    return b.model({"x": SHAPE, "x2": SHAPE} if other == "x2" else {"x": SHAPE}, outs)


def _feeds(model):
    rng = np.random.default_rng(1)
    feeds = {i.name: rng.standard_normal(SHAPE).astype(np.float32) for i in model.graph.input}
    feeds["x"][0, 0, :32] = np.arange(32) * np.float32(0.0371) / 2  # exact ties: half to even
    return feeds


@pytest.mark.parametrize(("other", "m_shape", "zp_dtype"), [
    ("x2", (64,), np.uint8), ("const", (64,), np.int8), ("x2", (1,), np.uint8)])
def test_rewrites_bit_exact(other, m_shape, zp_dtype):
    model = _pts_input(other=other, m_shape=m_shape, zp_dtype=zp_dtype)
    out, report = FUSE.run(model, numeric="none")
    assert report.result("fuse-add-mul-quantize").applied == 1
    after = op_types(out)
    assert after.count("AddMulQuantizeLinear") == 1
    assert not {"Add", "Mul", "QuantizeLinear"} & set(after)
    feeds = _feeds(model)
    want = run_model(model, feeds)
    for custom_ops in (True, False):  # the native kernel, then the inlined local function
        got = make_session(out, custom_ops=custom_ops).run(None, feeds)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize(("kwargs", "reason"), [
    (dict(per_axis=True), "per-axis"),
    (dict(mul_read=True), "read by more"),
    (dict(m_shape=(10, 64)), "one factor per channel"),
])
def test_refusals(kwargs, reason):
    out, report = FUSE.run(_pts_input(**kwargs), numeric="none")
    r = report.result("fuse-add-mul-quantize")
    assert r.applied == 0 and reason in r.refused[0][1]
    assert "AddMulQuantizeLinear" not in op_types(out)
