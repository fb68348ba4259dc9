"""ort-matmul-nbits: float-input MatMul over 4-bit weight codes becomes MatMulNBits."""

from __future__ import annotations

import numpy as np
import pytest
from qdq_graphs import Builder, op_types, run_model

from onnxvq.core.pipeline import Pipeline
from onnxvq.core.runtime import make_session
from onnxvq.passes.ort_matmul_nbits import OrtMatMulNBits, block_size, pack_nbits


def _weight_only(k: int = 40, n: int = 24, *, zp: int = 0, axis: int = 1, bias: bool = True,
                 read_twice: bool = False, low: int = -8, high: int = 7):
    b = Builder()
    w = b.rng.integers(low, high + 1, (k, n)).astype(np.int8)
    size = n if axis == 1 else k
    s = (b.rng.random(size) * 0.01 + 0.001).astype(np.float32)
    dq = b.op("DequantizeLinear", b.const(w, "w"), b.const(s, "ws"),
              b.const(np.full(size, zp, np.int8), "wz"), axis=axis)[0]
    y = b.op("MatMul", "x", dq)[0]
    if bias:
        y = b.op("Add", y, b.const(b.rng.standard_normal(n).astype(np.float32)))[0]
    outs = {y: [2, 5, n]}
    if read_twice:
        outs[b.op("Relu", dq)[0]] = [k, n]
    return b.model({"x": [2, 5, k]}, outs)


def _feeds(k: int = 40):
    return {"x": np.random.default_rng(1).standard_normal((2, 5, k)).astype(np.float32)}


@pytest.mark.parametrize("bias", [True, False])
def test_lowers_to_matmul_nbits_with_the_same_weights(bias):
    model = _weight_only(bias=bias)  # K = 40: one padded block of 64
    out, report = Pipeline((OrtMatMulNBits(),)).run(model, numeric="none")
    assert report.result("ort-matmul-nbits").applied == 1
    assert op_types(out) == ["MatMulNBits"]
    node = out.graph.node[0]
    assert {a.name: a.i for a in node.attribute if a.type == 2}["block_size"] == 64
    assert len(node.input) == (6 if bias else 3)
    # reference unoptimised: ORT's own optimiser runs a float-input DQ(int8)·MatMul with int8
    # activations (dynamically quantized), 2e-3 off
    want = make_session(model, custom_ops=False, optimize=False).run(None, _feeds())[0]
    got = run_model(out, _feeds())[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # float32 summation order only


def test_packing_layout():
    codes = np.array([[-8, 7], [1, -1], [0, 3]], np.int8)  # K=3, N=2
    b = pack_nbits(codes, 16)
    assert b.shape == (2, 1, 8) and b.dtype == np.uint8
    # column 0: u = 0, 9, 8 (+ padding 8): low nibble first
    assert b[0, 0, 0] == 0 | (9 << 4) and b[0, 0, 1] == 8 | (8 << 4)
    assert b[1, 0, 0] == 15 | (7 << 4)
    assert [block_size(k) for k in (3, 40, 128, 384, 1536)] == [16, 64, 128, 128, 128]


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"zp": 1}, "zero point is not 0"),
    ({"axis": 0}, "not per column"),
    ({"read_twice": True}, "read elsewhere"),
])
def test_refusals(kwargs, reason):
    _, report = Pipeline((OrtMatMulNBits(),)).run(_weight_only(**kwargs), numeric="none")
    r = report.result("ort-matmul-nbits")
    assert r.applied == 0 and reason in r.refused[0][1]


def test_ignores_8_bit_codes_and_quantized_activations():
    _, report = Pipeline((OrtMatMulNBits(),)).run(_weight_only(low=-127, high=127),
                                                  numeric="none")
    assert report.result("ort-matmul-nbits").applied == 0
    b = Builder()
    y = b.linear(b.qdq("x", 0.03, 100), 16, 8)  # W8/A8: not weight-only
    _, report = Pipeline((OrtMatMulNBits(),)).run(b.model({"x": [2, 16]}, {y: [2, 8]}),
                                                  numeric="none")
    r = report.result("ort-matmul-nbits")
    assert r.applied == 0 and not r.refused
