"""fuse-add-int-layer-norm: AddMulQuantizeLinear → IntLayerNorm (the --pts residual norm) becomes
one AddIntLayerNorm, bit-exact with the pair (native kernels and local functions)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from qdq_graphs import Builder, op_types

from onnxvq.core.pipeline import Pipeline
from onnxvq.core.runtime import make_session
from onnxvq.passes.fuse_add_int_layer_norm import FuseAddIntLayerNorm
from onnxvq.passes.fuse_add_mul_quantize import FuseAddMulQuantize
from onnxvq.plugins.functions import DOMAIN
from onnxvq.plugins.ops import add_functions
from onnxvq.plugins.reference import layernorm_params

C = 72  # not a multiple of 16: the AVX-512 rows' masked tail
SHAPE = [3, 10, C]
FUSE = Pipeline((FuseAddMulQuantize(), FuseAddIntLayerNorm()), infer_shapes=True)


def _pts_norm(*, zp: int = 3, zp_attr: int | None = None, codes_read: bool = False,
              out_dtype: int = 2):
    b = Builder()
    r = b.op("Add", "x", "x2")[0]
    alpha = b.rng.integers(0, 4, C)
    t = b.op("Mul", r, b.const((2.0 ** -alpha).astype(np.float32), "m"))[0]
    zt = np.int8 if zp < 0 else np.uint8
    q = b.op("QuantizeLinear", t, b.const(np.float32(0.0371), "s"), b.const(zt(zp), "zp"))[0]
    out_zp = 128 if out_dtype == 2 else 0
    p = layernorm_params(b.rng.normal(1, 0.4, C), b.rng.normal(0, 0.5, C), 0.0371, alpha, zp,
                         0.03, out_zp, eps=1e-6, output_dtype=out_dtype)
    attrs = {**p.attributes(), "zero_point": zp if zp_attr is None else zp_attr}
    y = b.op("IntLayerNorm", q, b.const(p.alpha, "al"), b.const(p.gamma, "ga"),
             b.const(p.beta, "be"), domain=DOMAIN, **attrs)[0]
    s_out = b.const(np.float32(0.03), "so")
    z_out = b.const((np.uint8 if out_dtype == 2 else np.int8)(out_zp), "zo")
    outs = {b.op("DequantizeLinear", y, s_out, z_out)[0]: SHAPE, r: SHAPE}
    if codes_read:
        outs[b.op("Cast", q, to=1)[0]] = SHAPE
    # the local functions type IntLayerNorm's output (ORT needs it: the kernel's is variadic)
    return onnx.shape_inference.infer_shapes(add_functions(b.model({"x": SHAPE, "x2": SHAPE},
                                                                   outs)))


def _feeds():
    rng = np.random.default_rng(1)
    feeds = {k: rng.normal(0, 3, SHAPE).astype(np.float32) for k in ("x", "x2")}
    feeds["x2"][0, 0] = -feeds["x"][0, 0]  # an all-zero row: Y is the quantized beta
    feeds["x"][1, 0] = 1e4  # saturated codes
    return feeds


@pytest.mark.parametrize(("zp", "out_dtype"), [(3, 2), (-5, 3), (200, 3)])
def test_rewrites_bit_exact(zp, out_dtype):
    model = _pts_norm(zp=zp, out_dtype=out_dtype)
    out, report = FUSE.run(model, numeric="none")
    assert report.result("fuse-add-mul-quantize").applied == 1
    assert report.result("fuse-add-int-layer-norm").applied == 1
    assert sorted(op_types(out)) == ["AddIntLayerNorm", "DequantizeLinear"]
    feeds = _feeds()
    want = make_session(model, custom_ops=True).run(None, feeds)
    for custom_ops in (True, False):  # the native kernel, then the inlined local function
        got = make_session(out, custom_ops=custom_ops).run(None, feeds)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize(("kwargs", "reason"), [
    (dict(codes_read=True), "read by more"),
    (dict(zp_attr=4), "zero_point"),
])
def test_refusals(kwargs, reason):
    out, report = FUSE.run(_pts_norm(**kwargs), numeric="none")
    r = report.result("fuse-add-int-layer-norm")
    assert r.applied == 0 and reason in r.refused[0][1]
    assert "AddIntLayerNorm" not in op_types(out) and "IntLayerNorm" in op_types(out)
