"""ort-unsigned-weights: int8 weights of ORT's own int8 kernels stored as uint8 W+128 (zero point
128) where MLAS's U8S8 kernels saturate; ORT still fuses them, and the sums are exact."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxvq.core.config import QuantConfig
from onnxvq.core.errors import UsageError
from onnxvq.core.pipeline import PassContext, Pipeline
from onnxvq.passes.ort_unsigned_weights import OrtUnsignedWeights, unsigned_weights_enabled
from onnxvq.passes.pipelines import PACK_INT4, quantization_pipeline
from onnxvq.plugins import native

UINT8 = PassContext(config=QuantConfig(ort_weights="uint8"))
INT8 = PassContext(config=QuantConfig(ort_weights="int8"))
K, N = 33, 45  # odd: no vector width divides either
# MLAS's AVX2 U8S8 kernel saturates here (no VNNI, no AMX): the original model is wrong
SATURATES = not unsigned_weights_enabled(INT8) and unsigned_weights_enabled(PassContext())


def _saturating_weight(shape, rng) -> np.ndarray:
    """Codes whose pairs along K share a sign, mostly ±127: with activations near 255 each pair
    of u8·s8 products is far past int16 (2·255·127 = 64770)."""
    sign = np.where(rng.random(shape[0]) < 0.5, -1, 1).reshape(-1, *[1] * (len(shape) - 1))
    return (sign * rng.integers(100, 128, shape)).astype(np.int8)


def _activation(shape, rng) -> np.ndarray:
    return rng.integers(200, 256, shape).astype(np.uint8)


def _model(nodes, inputs, outputs, inits, *, ms: bool = False) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.microsoft", 1)] if ms
                                              else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def _dq_model(op: str, *, per_channel: bool, requantize: bool, rng, zw=0):
    """x_q (uint8, zero point 3) ─DQ─ op ─(Q─DQ)─ y, with DQ(W) as the weight."""
    x_shape, w_shape, axis = {
        "MatMul": ([2, 7, K], [K, N], 1), "Gemm": ([7, K], [N, K], 0),
        "Conv": ([2, 8, 6, 5], [N, 8, 3, 3], 0)}[op]
    w = _saturating_weight(w_shape if op != "Gemm" else [K, N], rng)
    if op == "Gemm":
        w = np.ascontiguousarray(w.T)  # transB: the pairs still run along K
    n = w_shape[axis]
    sw = (rng.random(n if per_channel else ()) * 0.01 + 0.001).astype(np.float32)
    inits = {"w": w, "sw": sw, "zw": np.full(np.shape(sw), zw, np.int8),
             "sx": np.float32(0.02), "zx": np.uint8(3), "sy": np.float32(0.5),
             "zy": np.uint8(128)}
    attrs = {"transB": 1} if op == "Gemm" else {"pads": [1, 1, 1, 1]} if op == "Conv" else {}
    nodes = [helper.make_node("DequantizeLinear", ["x_q", "sx", "zx"], ["x"], name="dq_x"),
             helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wf"], name="dq_w",
                              axis=axis),
             helper.make_node(op, ["x", "wf"], ["y"], name=op.lower(), **attrs)]
    out = "y"
    if requantize:
        nodes += [helper.make_node("QuantizeLinear", ["y", "sy", "zy"], ["y_q"], name="q_y"),
                  helper.make_node("DequantizeLinear", ["y_q", "sy", "zy"], ["yd"], name="dq_y")]
        out = "yd"
    x = _activation(x_shape, rng)
    ref = _reference(op, x, inits, requantize, axis)
    model = _model(nodes, [("x_q", TensorProto.UINT8, x_shape)],
                   [(out, TensorProto.FLOAT, list(ref.shape))], inits)
    return model, {"x_q": x}, ref


def _reference(op, x, p, requantize, axis):
    """The exact float64 result: int64 sums of (x_q - z_x)·W, scaled."""
    xi, w = x.astype(np.int64) - int(p["zx"]), p["w"].astype(np.int64)
    sw = np.asarray(p["sw"], np.float64)
    if op == "MatMul":
        acc = (xi @ w) * sw
    elif op == "Gemm":
        acc = (xi @ w.T) * sw
    else:
        xp = np.pad(xi, ((0, 0), (0, 0), (1, 1), (1, 1)))
        h, wd = x.shape[2], x.shape[3]
        patches = np.stack([xp[:, :, i:i + 3, j:j + 3] for i in range(h) for j in range(wd)], 1)
        acc = np.einsum("bpckl,ockl->bop", patches, w).reshape(x.shape[0], -1, h, wd)
        acc = acc * (sw.reshape(-1, 1, 1) if sw.ndim else sw)
    y = acc * float(p["sx"])
    if requantize:
        y = (np.clip(np.rint(y / float(p["sy"])) + 128, 0, 255) - 128) * float(p["sy"])
    return y


def _optimized_ops(model: onnx.ModelProto, tmp_path) -> Counter:
    """The op histogram of the graph ONNX Runtime really runs (tests/test_cnn.py's helper)."""
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)


def _run(model, feeds):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)[0].astype(np.float64)


def _rewrite(model, ctx=UINT8):
    out, report = Pipeline((OrtUnsignedWeights(),)).run(model, ctx=ctx, numeric="none")
    return out, report.result("ort-unsigned-weights")


def _inits(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


FUSED = {("MatMul", False): "MatMulIntegerToFloat", ("MatMul", True): "QLinearMatMul",
         ("Gemm", False): "QGemm", ("Gemm", True): "QGemm", ("Conv", True): "QLinearConv"}


@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel", "per-tensor"])
@pytest.mark.parametrize(("op", "requantize"), list(FUSED), ids=[
    f"{op}{'-q' if q else ''}" for op, q in FUSED])
def test_dq_weights_become_uint8_still_fuse_and_are_exact(op, requantize, per_channel,
                                                          tmp_path):
    model, feeds, ref = _dq_model(op, per_channel=per_channel, requantize=requantize,
                                  rng=np.random.default_rng(0))
    out, r = _rewrite(model)
    assert r.applied == 1 and not r.refused
    inits = _inits(out)
    dq_w = next(n for n in out.graph.node if n.name == "dq_w")
    w, zw = inits[dq_w.input[0]], inits[dq_w.input[2]]
    assert w.dtype == np.uint8 and zw.dtype == np.uint8 and (zw == 128).all()
    assert zw.shape == np.shape(_inits(model)["sw"])  # per-channel stays per-channel
    np.testing.assert_array_equal(w.astype(np.int16) - 128, _inits(model)["w"])
    # ORT 1.32 still fuses the uint8 weight DQ into its integer kernel
    ops = _optimized_ops(out, tmp_path)
    assert ops[FUSED[op, requantize]] == 1 and ops[op] == 0, ops
    got, before = _run(out, feeds), _run(model, feeds)
    step = 0.5 if requantize else 0.0  # a code may move at a rounding midpoint (float32 scale)
    assert np.abs(got - ref).max() <= step + 1e-4 * np.abs(ref).max()
    if SATURATES:  # what the rewrite is for: the int8 original is wrong on this CPU
        assert np.abs(before - ref).max() > 10 * (step + 1e-4 * np.abs(ref).max())
    elif not unsigned_weights_enabled(PassContext()):  # exact int8 kernels (VNNI/AMX): same
        np.testing.assert_allclose(got, before, rtol=1e-6, atol=step + 1e-6)


def _integer_node(op: str, rng):
    """MatMulIntegerToFloat / QGemm / MatMulInteger written directly, with a bias where the op
    takes one."""
    x_shape = [3, 5, K] if op != "QGemm" else [5, K]
    w = _saturating_weight([K, N], rng)
    sw = (rng.random(N) * 0.01 + 0.001).astype(np.float32)
    inits = {"w": w, "sw": sw, "zw": np.zeros(N, np.int8), "sx": np.float32(0.02),
             "zx": np.uint8(3), "bias": rng.standard_normal(N).astype(np.float32),
             "c": rng.integers(-1000, 1000, N).astype(np.int32)}
    if op == "MatMulInteger":
        inits["zw"] = np.zeros((), np.int8)
    ins = {"MatMulIntegerToFloat": ["x_q", "w", "sx", "sw", "zx", "zw", "bias"],
           "QGemm": ["x_q", "sx", "zx", "w", "sw", "zw", "c"],
           "MatMulInteger": ["x_q", "w", "zx", "zw"]}[op]
    domain = "" if op == "MatMulInteger" else "com.microsoft"
    node = helper.make_node(op, ins, ["y"], name=op, domain=domain)
    out_type = TensorProto.INT32 if op == "MatMulInteger" else TensorProto.FLOAT
    model = _model([node], [("x_q", TensorProto.UINT8, x_shape)],
                   [("y", out_type, x_shape[:-1] + [N])],
                   {k: v for k, v in inits.items() if k in ins}, ms=bool(domain))
    x = _activation(x_shape, rng)
    acc = (x.astype(np.int64) - 3) @ w.astype(np.int64)
    ref = {"MatMulIntegerToFloat": acc * sw.astype(np.float64) * 0.02 + inits["bias"],
           "QGemm": (acc + inits["c"]) * sw.astype(np.float64) * 0.02,
           "MatMulInteger": acc.astype(np.float64)}[op]
    return model, {"x_q": x}, ref


@pytest.mark.parametrize("op", ["MatMulIntegerToFloat", "QGemm", "MatMulInteger"])
def test_integer_nodes_written_directly_get_uint8_weights_and_exact_sums(op):
    model, feeds, ref = _integer_node(op, np.random.default_rng(1))
    out, r = _rewrite(model)
    assert r.applied == 1 and not r.refused
    node, inits = out.graph.node[0], _inits(out)
    w_at, zw_at = {"MatMulIntegerToFloat": (1, 5), "QGemm": (3, 5), "MatMulInteger": (1, 3)}[op]
    assert inits[node.input[w_at]].dtype == np.uint8
    assert (inits[node.input[zw_at]] == 128).all()
    got = _run(out, feeds)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4 * np.abs(ref).max())
    if SATURATES:
        assert np.abs(_run(model, feeds) - ref).max() > 1e-2 * np.abs(ref).max()


def test_a_missing_weight_zero_point_gets_one_of_the_scale_shape():
    model, feeds, ref = _dq_model("MatMul", per_channel=True, requantize=False,
                                  rng=np.random.default_rng(2))
    dq_w = next(n for n in model.graph.node if n.name == "dq_w")
    del dq_w.input[2]
    out, r = _rewrite(model)
    assert r.applied == 1
    dq_w = next(n for n in out.graph.node if n.name == "dq_w")
    assert _inits(out)[dq_w.input[2]].shape == (N,)
    assert np.abs(_run(out, feeds) - ref).max() <= 1e-4 * np.abs(ref).max()


def _refusal(model) -> str:
    out, r = _rewrite(model)
    assert r.applied == 0
    assert all(i.data_type != TensorProto.UINT8 or i.name in ("zx", "zy")
               for i in out.graph.initializer)
    return r.refused[0][1]


def test_refuses_an_asymmetric_weight():
    model, *_ = _dq_model("MatMul", per_channel=True, requantize=False,
                          rng=np.random.default_rng(3), zw=1)
    assert _refusal(model) == "weight zero point is not 0"


def test_refuses_an_int8_activation():
    model, *_ = _dq_model("MatMul", per_channel=False, requantize=False,
                          rng=np.random.default_rng(3))
    zx = next(i for i in model.graph.initializer if i.name == "zx")
    zx.CopyFrom(numpy_helper.from_array(np.int8(3), "zx"))
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.INT8
    assert _refusal(model) == "activation operand is not uint8"


def test_refuses_a_dq_read_as_an_activation():
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("DequantizeLinear", ["x_q", "sx", "zx"], ["x"]),
             helper.make_node("DequantizeLinear", ["w", "sw"], ["wf"]),
             helper.make_node("MatMul", ["wf", "x"], ["y"])]  # W·x: the weight as operand A
    model = _model(nodes, [("x_q", TensorProto.UINT8, [K, 5])], [("y", TensorProto.FLOAT, [N, 5])],
                   {"w": _saturating_weight([N, K], rng), "sw": np.float32(0.01),
                    "sx": np.float32(0.02), "zx": np.uint8(3)})
    assert "weight" in _refusal(model)


def test_four_bit_codes_cannot_saturate_and_stay_int8_for_int4_packing():
    model, *_ = _dq_model("MatMul", per_channel=True, requantize=False,
                          rng=np.random.default_rng(4))
    w = next(i for i in model.graph.initializer if i.name == "w")
    codes = np.random.default_rng(4).integers(-8, 8, (K, N)).astype(np.int8)
    w.CopyFrom(numpy_helper.from_array(codes, "w"))
    assert "cannot saturate" in _refusal(model)
    packed, report = PACK_INT4.run(_rewrite(model)[0], numeric="none")
    assert report.passes[0].applied == 1


def test_int8_setting_and_auto_per_cpu(monkeypatch):
    model, *_ = _dq_model("Conv", per_channel=True, requantize=True,
                          rng=np.random.default_rng(5))
    out, r = _rewrite(model, INT8)
    assert r.applied == 0 and not r.refused
    # auto: uint8 only without AVX-512 VNNI, AVX-VNNI and AMX-INT8
    for flags, unsigned in (((), True), (("vnni",), False), (("avx_vnni",), False),
                            (("amx",), False)):
        monkeypatch.setattr(native, "cpu_has_avx512_vnni", lambda f=flags: "vnni" in f)
        monkeypatch.setattr(native, "cpu_has_avx_vnni", lambda f=flags: "avx_vnni" in f)
        monkeypatch.setattr(native, "cpu_has_amx", lambda f=flags: "amx" in f)
        assert unsigned_weights_enabled(PassContext(config=QuantConfig())) is unsigned
        assert _rewrite(model, PassContext(config=QuantConfig()))[1].applied == int(unsigned)


def test_onnxvq_quantized_linear_is_left_alone():
    """com.onnxvq QuantizedLinear takes int8 codes with zero point 0 (its own exact kernels)."""
    node = helper.make_node("QuantizedLinear", ["x_q", "w", "sx", "sw", "zx", "zw", "bias"],
                            ["y"], name="ql", domain="com.onnxvq")
    rng = np.random.default_rng(6)
    model = _model([node], [("x_q", TensorProto.UINT8, [3, K])], [("y", TensorProto.FLOAT, [3, N])],
                   {"w": _saturating_weight([K, N], rng), "sx": np.float32(0.1),
                    "sw": np.float32(0.1), "zx": np.uint8(0), "zw": np.int8(0),
                    "bias": np.zeros(N, np.float32)})
    model.opset_import.append(helper.make_opsetid("com.onnxvq", 1))
    out, report = Pipeline((OrtUnsignedWeights(),)).run(model, ctx=UINT8, numeric="none",
                                                        validate="none")
    assert report.result("ort-unsigned-weights").applied == 0
    assert _inits(out)["w"].dtype == np.int8


def test_runs_last_for_target_ort_only():
    for cfg in (QuantConfig(), QuantConfig(ort_fusions=False), QuantConfig(pts=True, lis=True),
                QuantConfig(lis_qdq=True), QuantConfig(method="twin")):
        assert quantization_pipeline(cfg).passes[-1].id == "ort-unsigned-weights", cfg
    four = quantization_pipeline(QuantConfig(w_bits=4)).passes
    assert [p.id for p in four[-2:]] == ["ort-unsigned-weights", "pack-int4-weights"]
    assert all(p.id != "ort-unsigned-weights"
               for p in quantization_pipeline(QuantConfig(target="trt")).passes)
    with pytest.raises(UsageError, match="ort_weights"):
        QuantConfig(ort_weights="int4")


@pytest.mark.parametrize("setting", ["int8", "uint8"])
def test_a_cnn_run_records_the_setting_and_is_exact_with_uint8(setting):
    """The tiny CNN end to end, each setting forced: the sidecar says which, its passes how many
    weights moved; the two models dequantize to the same weights (neutral by construction)."""
    from onnxvq.models.tiny_cnn import build_tiny_cnn
    from onnxvq.quantizer.run import quantize

    runs = {w: quantize(build_tiny_cnn(), None, QuantConfig(calib_size=16, ort_weights=w))
            for w in ("int8", setting)}
    side = runs[setting].sidecar()
    assert side["config"]["ort_weights"] == setting
    moved = next(p["applied"] for p in side["passes"] if p["pass"] == "ort-unsigned-weights")
    assert moved == (10 if setting == "uint8" else 0)  # 9 Convs and the head Gemm
    a, b = (_inits(runs[w].model) for w in ("int8", setting))
    for name, w in a.items():
        if w.dtype == np.int8 and w.ndim > 1:
            got = b.get(name, b.get(f"{name}/uint8"))
            np.testing.assert_array_equal(got.astype(np.int16) - (128 if setting == "uint8"
                                                                  else 0), w)
