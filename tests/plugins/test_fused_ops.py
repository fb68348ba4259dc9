"""The fused float-to-code ops GeluQuantizeLinear and AddLayerNormQuantize: native kernels, local
functions and Polygraphy references against plugins/reference/fused.py (codes equal, or one
apart within the kernels' float32 bound of a rounding midpoint; the sums bit-exact)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxvq.core.runtime import session_options
from onnxvq.plugins.functions import DOMAIN
from onnxvq.plugins.ops import add_functions
from onnxvq.plugins.reference.fused import (
    add_layer_norm_quantize,
    add_mul_quantize_linear,
    gelu,
    gelu_quantize_linear,
)


def _gelu_model(n: int, bias: np.ndarray, scale: float, zp) -> onnx.ModelProto:
    zt = TensorProto.INT8 if np.asarray(zp).dtype == np.int8 else TensorProto.UINT8
    node = helper.make_node("GeluQuantizeLinear", ["x", "b", "s", "z"], ["y"], domain=DOMAIN)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, n])],
        [helper.make_tensor_value_info("y", zt, [None, n])],
        [numpy_helper.from_array(bias, "b"), numpy_helper.from_array(np.float32(scale), "s"),
         numpy_helper.from_array(np.asarray(zp), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return add_functions(model)


def _run(model: onnx.ModelProto, x: np.ndarray, lib: str | None) -> np.ndarray:
    so = session_options(custom_ops=False)
    if lib is not None:
        so.register_custom_ops_library(lib)
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _inputs(rng, rows: int, n: int) -> np.ndarray:
    x = rng.normal(0, 2, (rows, n)).astype(np.float32)
    x.flat[:10] = [0, -0.0, 1e-30, -1e-30, 50, -50, 1e4, -1e4, 3.3, -3.3]
    return x


@pytest.mark.parametrize("n", [1, 7, 32, 37, 1536])
@pytest.mark.parametrize(("scale", "zp"), [(0.02, np.uint8(3)), (0.005, np.int8(-90)),
                                           (1e-4, np.uint8(128)), (3.0, np.int8(0))])
def test_kernel_matches_the_reference(library, n, scale, zp):
    rng = np.random.default_rng(n)
    bias = rng.normal(0, 1, n).astype(np.float32)
    x = _inputs(rng, 257, n)
    model = _gelu_model(n, bias, scale, zp)
    got, want = _run(model, x, library), gelu_quantize_linear(x, bias, scale, zp)
    assert got.dtype == want.dtype and got.shape == want.shape
    diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
    assert diff.max() <= 1
    if diff.any():  # a one-code difference only where the exact value is within 1e-5 of a midpoint
        v = gelu((x + bias).astype(np.float32)) / scale
        assert np.abs(np.abs(v - np.floor(v)) - 0.5)[diff > 0].max() < 1e-5 * (1 + np.abs(v)).max()
    assert diff.mean() < 1e-3


def test_function_is_the_unfused_graph(library):
    rng = np.random.default_rng(5)
    bias = rng.normal(0, 1, 64).astype(np.float32)
    x = _inputs(rng, 100, 64)
    model = _gelu_model(64, bias, 0.01, np.uint8(20))
    fn = _run(model, x, None)  # no kernel: ORT inlines the local function
    want = gelu_quantize_linear(x, bias, 0.01, np.uint8(20))
    assert np.abs(fn.astype(int) - want.astype(int)).max() <= 1
    assert (_run(model, x, library) == fn).mean() > 0.999


def test_kernel_rejects_bad_inputs(library):
    bad = _gelu_model(8, np.zeros(4, np.float32), 0.1, np.uint8(0))  # bias of the wrong length
    with pytest.raises(Exception, match="bias must have shape"):
        _run(bad, np.zeros((2, 8), np.float32), library)
    neg = _gelu_model(8, np.zeros(8, np.float32), -0.1, np.uint8(0))
    with pytest.raises(Exception, match="positive"):
        _run(neg, np.zeros((2, 8), np.float32), library)


def test_polygraphy_reference_gives_the_reference_codes():
    import onnx_graphsurgeon as gs

    from onnxvq.plugins.polygraphy_ext import _gelu_quantize_linear

    rng = np.random.default_rng(2)
    bias = rng.normal(0, 1, 16).astype(np.float32)
    graph = gs.import_onnx(_gelu_model(16, bias, 0.03, np.int8(5)))
    x = _inputs(rng, 9, 16)
    out = _gelu_quantize_linear(graph.nodes[0], {"x": x})
    np.testing.assert_array_equal(out["y"], gelu_quantize_linear(x, bias, 0.03, np.int8(5)))


# ---------------------------------------------------------------- AddLayerNormQuantize

def _ln_model(c: int, b_shape: list, gamma, beta, scale: float, zp, eps: float):
    zt = TensorProto.INT8 if np.asarray(zp).dtype == np.int8 else TensorProto.UINT8
    node = helper.make_node("AddLayerNormQuantize", ["a", "b", "g", "be", "s", "z"], ["y", "sum"],
                            domain=DOMAIN, epsilon=eps)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 197, c]),
                      helper.make_tensor_value_info("b", TensorProto.FLOAT, b_shape)],
        [helper.make_tensor_value_info("y", zt, None),
         helper.make_tensor_value_info("sum", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(gamma, "g"), numpy_helper.from_array(beta, "be"),
         numpy_helper.from_array(np.float32(scale), "s"), numpy_helper.from_array(zp, "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return add_functions(model)


def _run_ln(model, feeds, lib):
    so = session_options(custom_ops=False)
    if lib is not None:
        so.register_custom_ops_library(lib)
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.parametrize(("c", "b_shape", "zp"), [
    (384, [3, 197, 384], np.uint8(128)),   # residual: same shape
    (37, [1, 197, 37], np.int8(3)),        # position embedding: repeated over the batch, a tail
    (16, [16], np.int8(-2)),               # one row of B for every row of A
])
def test_add_layer_norm_kernel_matches_the_reference(library, c, b_shape, zp):
    rng = np.random.default_rng(c)
    gamma = rng.normal(1, 0.3, c).astype(np.float32)
    beta = rng.normal(0, 0.2, c).astype(np.float32)
    model = _ln_model(c, b_shape, gamma, beta, 0.03, zp, 1e-6)
    a = rng.normal(0, 3, (3, 197, c)).astype(np.float32)
    b = rng.normal(0, 1, b_shape).astype(np.float32)
    a[0, 0, :] = 5.0 - np.broadcast_to(b, a.shape)[0, 0]  # a constant row: codes of beta
    want_y, want_s = add_layer_norm_quantize(a, b, gamma, beta, 0.03, zp, 1e-6)
    for lib in (library, None):  # the kernel, then the local function (ORT's LayerNorm)
        y, s = _run_ln(model, {"a": a, "b": b}, lib)
        np.testing.assert_array_equal(s, want_s)
        d = np.abs(y.astype(np.int32) - want_y.astype(np.int32))
        assert y.dtype == want_y.dtype and d.max() <= 1 and d.mean() < 1e-4
    np.testing.assert_array_equal(y[0, 0], want_y[0, 0])


def test_add_layer_norm_kernel_rejects_bad_broadcast(library):
    model = _ln_model(8, [2, 8], np.ones(8, np.float32), np.zeros(8, np.float32), 0.1,
                      np.uint8(0), 1e-5)
    with pytest.raises(Exception, match="broadcast"):
        _run_ln(model, {"a": np.zeros((1, 197, 8), np.float32),
                        "b": np.zeros((2, 8), np.float32)}, library)


def test_add_layer_norm_polygraphy_reference():
    import onnx_graphsurgeon as gs

    from onnxvq.plugins.polygraphy_ext import _add_layer_norm_quantize

    rng = np.random.default_rng(3)
    gamma, beta = np.ones(16, np.float32), rng.normal(0, 1, 16).astype(np.float32)
    graph = gs.import_onnx(_ln_model(16, [1, 197, 16], gamma, beta, 0.05, np.uint8(9), 1e-6))
    a = rng.normal(0, 1, (2, 197, 16)).astype(np.float32)
    b = rng.normal(0, 1, (1, 197, 16)).astype(np.float32)
    out = _add_layer_norm_quantize(graph.nodes[0], {"a": a, "b": b})
    want_y, want_s = add_layer_norm_quantize(a, b, gamma, beta, 0.05, np.uint8(9), 1e-6)
    np.testing.assert_array_equal(out["y"], want_y)
    np.testing.assert_array_equal(out["sum"], want_s)


# ---------------------------------------------------------------- AddMulQuantizeLinear

@pytest.mark.parametrize(("c", "b_shape", "zp"), [(384, [2, 197, 384], np.uint8(0)),
                                                  (37, [197, 37], np.int8(-7))])
def test_add_mul_quantize_is_bit_exact(library, c, b_shape, zp):
    rng = np.random.default_rng(c)
    zt = TensorProto.INT8 if zp.dtype == np.int8 else TensorProto.UINT8
    m = (2.0 ** -rng.integers(0, 4, c)).astype(np.float32)
    node = helper.make_node("AddMulQuantizeLinear", ["a", "b", "m", "s", "z"], ["y", "sum"],
                            domain=DOMAIN)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 197, c]),
                      helper.make_tensor_value_info("b", TensorProto.FLOAT, b_shape)],
        [helper.make_tensor_value_info("y", zt, None),
         helper.make_tensor_value_info("sum", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(m, "m"), numpy_helper.from_array(np.float32(0.0371), "s"),
         numpy_helper.from_array(zp, "z")])
    model = add_functions(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    a = rng.normal(0, 4, (2, 197, c)).astype(np.float32)
    a[0, 0] = np.arange(c) * np.float32(0.0371) / 2 / m  # exact halves: ties to even
    b = rng.normal(0, 1, b_shape).astype(np.float32)
    b.reshape(-1, c)[0] = 0
    want = add_mul_quantize_linear(a, b, m, 0.0371, zp)
    for lib in (library, None):
        got = _run_ln(model, {"a": a, "b": b}, lib)
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype
            np.testing.assert_array_equal(g, w)
