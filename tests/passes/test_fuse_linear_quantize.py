"""fuse-linear-quantize: a QuantizedLinear's only reader, QuantizeLinear (directly or through
the QKV Reshape, per-tensor or per piece) or GeluQuantizeLinear, becomes its epilogue; the
codes are the same bits."""

from __future__ import annotations

import numpy as np
import onnx
from qdq_graphs import Builder, op_types

from onnxvq.core.config import QuantConfig
from onnxvq.core.pipeline import PassContext, Pipeline
from onnxvq.core.runtime import make_session
from onnxvq.passes.fuse_gelu_quantize import FuseGeluQuantize
from onnxvq.passes.fuse_linear_quantize import FuseLinearQuantize
from onnxvq.passes.ort_matmul_bias import OrtMatMulBias
from onnxvq.passes.ort_quantized_linear import OrtQuantizedLinear

ON = PassContext(config=QuantConfig(quantized_linear="on"))
FEEDS = {"x": np.random.default_rng(2).standard_normal((2, 5, 48)).astype(np.float32) * 2}


def _lower(model, *, fuse: bool):
    passes = (FuseGeluQuantize(), OrtMatMulBias(), OrtQuantizedLinear())
    return Pipeline(passes + ((FuseLinearQuantize(),) if fuse else ())).run(
        model, ctx=ON, numeric="none")


def _qkv(per_piece: bool, read_twice: bool = False):
    """qkv Linear -> Reshape [2, 5, 3, 2, 16] -> QuantizeLinear (axis 2 per piece, or one)."""
    b = Builder()
    y = b.linear(b.qdq("x", 0.03, 100), 48, 96)
    r = b.op("Reshape", y, b.const(np.array([2, 5, 3, 2, 16], np.int64)))[0]
    s = np.array([0.02, 0.03, 0.05], np.float32) if per_piece else np.float32(0.03)
    z = np.array([120, 128, 131], np.uint8) if per_piece else np.uint8(128)
    q = b.op("QuantizeLinear", r, b.const(s), b.const(z), axis=2)[0]
    outs = {q: [2, 5, 3, 2, 16]}
    if read_twice:
        outs[y] = [2, 5, 96]
    model = b.model({"x": [2, 5, 48]}, outs)
    model.graph.output[0].type.tensor_type.elem_type = 2  # uint8 codes
    # the quantized pipeline's graphs carry inferred shapes: the per-piece split is read there
    return onnx.shape_inference.infer_shapes(model)


def _mlp():
    """fc1 (no bias Add) -> erf GELU (+ bias) -> Q/DQ -> fc2."""
    b = Builder()
    h = b.op("MatMul", b.qdq("x", 0.03, 100), b.qweight(48, 64))[0]
    h = b.op("Add", h, b.const(b.rng.standard_normal(64).astype(np.float32)))[0]
    y = b.linear(b.qdq(b.gelu_erf(h), 0.02, 10), 64, 48)
    return b.model({"x": [2, 5, 48]}, {y: [2, 5, 48]})


def _same(model):
    before, _ = _lower(model, fuse=False)
    after, report = _lower(model, fuse=True)
    want = make_session(before).run(None, FEEDS)[0]
    np.testing.assert_array_equal(make_session(after).run(None, FEEDS)[0], want)
    return after, report.result("fuse-linear-quantize")


def test_qkv_quantizer_through_the_reshape_per_piece_and_per_tensor():
    for per_piece in (True, False):
        out, r = _same(_qkv(per_piece))
        assert r.applied == 1, r.refused
        assert op_types(out) == ["QuantizeLinear", "QuantizedLinearQuantize", "Reshape"]
        ys = [t for t in out.graph.initializer if t.name.endswith("/y_scale")][0]
        assert list(ys.dims) == ([96] if per_piece else [])


def test_fc1_gelu_becomes_the_epilogue():
    out, r = _same(_mlp())
    assert r.applied == 1, r.refused
    ops = op_types(out)
    assert "QuantizedLinearGeluQuantize" in ops and "GeluQuantizeLinear" not in ops
    assert ops.count("QuantizedLinear") == 1  # fc2 keeps its float output (residual)


def test_refuses_a_float_output_read_elsewhere():
    _, report = _lower(_qkv(True, read_twice=True), fuse=True)
    r = report.result("fuse-linear-quantize")
    assert r.applied == 0 and "read elsewhere" in r.refused[0][1]
