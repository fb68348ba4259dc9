"""quantized-linear: MatMulIntegerToFloat, or a bias-less DQ·DQ MatMul, becomes one com.onnxvq
QuantizedLinear with the same outputs bit for bit (kernel and local function)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from qdq_graphs import Builder, op_types, run_model

from onnxvq.core.config import QuantConfig
from onnxvq.core.errors import UsageError
from onnxvq.core.pipeline import PassContext, Pipeline
from onnxvq.core.runtime import make_session
from onnxvq.passes.fuse_linear_quantize import FuseLinearQuantize
from onnxvq.passes.ort_matmul_bias import OrtMatMulBias
from onnxvq.passes.ort_quantized_linear import OrtQuantizedLinear
from onnxvq.passes.ort_unsigned_weights import OrtUnsignedWeights

ON = PassContext(config=QuantConfig(quantized_linear="on"))


def _graph(bias: bool = True, zp: int = 100, weight_zp: int = 0):
    b = Builder()
    x = b.qdq("x", 0.03, zp)
    w = b.qweight(40, 24)
    if weight_zp:
        b.inits[-1].CopyFrom(_int8_init(b.inits[-1].name, np.full(24, weight_zp, np.int8)))
    y = b.op("MatMul", x, w)[0]
    if bias:
        y = b.op("Add", y, b.const(b.rng.standard_normal(24).astype(np.float32)))[0]
    y = b.op("Relu", y)[0]  # the linear's output is not the graph output
    return b.model({"x": [2, 5, 40]}, {y: [2, 5, 24]})


def _int8_init(name, value):
    from onnx import numpy_helper

    return numpy_helper.from_array(value, name)


def _lower(model, ctx=ON, bias_pass=True):
    passes = (OrtMatMulBias(), OrtQuantizedLinear()) if bias_pass else (OrtQuantizedLinear(),)
    return Pipeline(passes).run(model, ctx=ctx, numeric="none")


def _feeds():
    return {"x": np.random.default_rng(2).standard_normal((2, 5, 40)).astype(np.float32) * 2}


@pytest.mark.parametrize("bias", [True, False])
def test_lowers_bit_exactly(bias):
    model = _graph(bias=bias)
    contrib, _ = Pipeline((OrtMatMulBias(),)).run(model, numeric="none")
    out, report = _lower(model)
    assert report.result("quantized-linear").applied == 1
    assert op_types(out) == ["QuantizeLinear", "QuantizedLinear", "Relu"], op_types(out)
    node = out.graph.node[1]
    assert node.domain == "com.onnxvq" and node.name.endswith("/QuantizedLinear")
    assert len(node.input) == 7
    before = make_session(contrib).run(None, _feeds())[0]  # MatMulIntegerToFloat / ORT's fusion
    np.testing.assert_array_equal(run_model(out, _feeds())[0], before)  # local function
    # The kernel is exact on every CPU; MLAS's int8-weight kernel saturates without VNNI, its
    # uint8-weight one (ort-unsigned-weights) never does: the kernel equals that one.
    exact, _ = Pipeline((OrtMatMulBias(), OrtUnsignedWeights())).run(
        model, ctx=PassContext(config=QuantConfig(ort_weights="uint8")), numeric="none")
    want = make_session(exact).run(None, _feeds())[0]
    np.testing.assert_array_equal(make_session(out).run(None, _feeds())[0], want)  # kernel


def test_auto_follows_the_cpu(monkeypatch):
    import onnxvq.passes.ort_quantized_linear as mod

    ctx = PassContext(config=QuantConfig())
    for has_amx, has_vnni, applied in ((False, False, 0), (True, False, 1), (False, True, 1),
                                       (True, True, 1)):
        monkeypatch.setattr(mod, "cpu_has_amx", lambda v=has_amx: v)
        monkeypatch.setattr(mod, "cpu_has_avx512_vnni", lambda v=has_vnni: v)
        assert _lower(_graph(), ctx)[1].result("quantized-linear").applied == applied
    off = PassContext(config=QuantConfig(quantized_linear="off"))
    out, report = _lower(_graph(), off)
    assert report.result("quantized-linear").applied == 0
    assert "MatMulIntegerToFloat" in op_types(out)


def test_refuses_int8_activations_and_weight_zero_points():
    b = Builder()
    s, z = b.const(np.float32(0.03), "s"), b.const(np.int8(0), "zp")
    x = b.op("DequantizeLinear", b.op("QuantizeLinear", "x", s, z)[0], s, z)[0]
    y = b.op("Relu", b.op("MatMul", x, b.qweight(40, 24))[0])[0]
    _, report = _lower(b.model({"x": [2, 5, 40]}, {y: [2, 5, 24]}), bias_pass=False)
    r = report.result("quantized-linear")
    assert r.applied == 0 and "not uint8" in r.refused[0][1]
    _, report = _lower(_graph(weight_zp=3))
    r = report.result("quantized-linear")
    assert r.applied == 0 and "zero point is not 0" in r.refused[0][1]


def test_refuses_a_dequantized_input_read_elsewhere():
    b = Builder()
    x = b.qdq("x", 0.03, 100)
    y = b.op("Relu", b.op("MatMul", x, b.qweight(40, 24))[0])[0]
    _, report = _lower(b.model({"x": [2, 5, 40]}, {y: [2, 5, 24], x: [2, 5, 40]}),
                       bias_pass=False)
    r = report.result("quantized-linear")
    assert r.applied == 0 and "read elsewhere" in r.refused[0][1]


def test_config_validates_the_mode():
    with pytest.raises(UsageError, match="unknown quantized_linear 'amx'"):
        QuantConfig(quantized_linear="amx")


@pytest.mark.slow
@pytest.mark.corpus
def test_deit_s_w8a8_outputs_are_unchanged(corpus_model):
    """DeiT-S (timm export) W8/A8: every int8 Linear becomes a QuantizedLinear (49: 4 a block,
    the patch embedding), then each QKV projection writes its attention's codes and each fc1
    its GELU codes (fuse-linear-quantize); the logits are the same bits as with
    MatMulIntegerToFloat + QuantizeLinear / GeluQuantizeLinear, through the native kernels and
    through the local functions."""
    from collections import Counter

    from onnxvq.core.metrics import sqnr
    from onnxvq.core.runtime import random_inputs
    from onnxvq.plugins.native import mlas_int8_exact
    from onnxvq.quantizer.run import quantize

    path = corpus_model("vit_small_patch16_224", "torchscript17")
    # int8 weights as on a VNNI CPU (on AVX2, auto stores them as uint8, which this pass refuses)
    cfg = QuantConfig(calib_size=4, batch_size=4, quantized_linear="off", ort_weights="int8")
    base = quantize(path, None, cfg).model
    # Without VNNI MLAS's int8 kernel (the base, and QuantizedLinear's local functions) saturates
    # while the native QuantizedLinear is exact: there the native run is compared with the same
    # model on uint8 weights (MLAS's exact U8U8 kernel), as close as its float MatMul fusions allow
    exact = quantize(path, None, dataclasses.replace(cfg, ort_weights="uint8")).model
    out, report = Pipeline((OrtQuantizedLinear(), FuseLinearQuantize())).run(
        base, ctx=ON, numeric="none")
    ops = Counter(n.op_type for n in out.graph.node)
    assert ops["QuantizedLinear"] == 49 - 24 and ops["MatMul"] == 0
    assert ops["QuantizedLinearQuantize"] == 12 and ops["QuantizedLinearGeluQuantize"] == 12
    assert ops["GeluQuantizeLinear"] == 0
    base_ops = Counter(n.op_type for n in base.graph.node)
    assert ops["QuantizeLinear"] == base_ops["QuantizeLinear"] - 12
    assert report.result("quantized-linear").refused == []
    assert report.result("fuse-linear-quantize").refused == []
    feeds = random_inputs(make_session(base), batch=2, seed=0)
    for native in (True, False):  # the other fused ops' functions differ from their kernels
        got = make_session(out, custom_ops=native).run(None, feeds)[0]
        if native and not mlas_int8_exact():
            want = make_session(exact).run(None, feeds)[0]
            assert sqnr(want, got) > 30  # measured 33.2 dB on a Zen 3 (seed 0, batch 2)
            continue
        want = make_session(base, custom_ops=native).run(None, feeds)[0]
        np.testing.assert_array_equal(got, want)
