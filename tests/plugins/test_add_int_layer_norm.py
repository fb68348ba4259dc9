"""AddIntLayerNorm (the --pts residual norm in one kernel): the native kernel (AVX-512 rows, and the
portable rows in a process with ONNXVQ_NO_AVX512), the local function and the Polygraphy reference
equal AddMulQuantizeLinear → IntLayerNorm bit for bit. Also the stand-alone IntLayerNorm's AVX2 rows
on a machine where it would take the AVX-512 ones."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxvq.core.runtime import session_options
from onnxvq.plugins.functions import DOMAIN
from onnxvq.plugins.ops import add_functions
from onnxvq.plugins.reference import int_layer_norm, layernorm_params
from onnxvq.plugins.reference.fused import add_int_layer_norm, add_mul_quantize_linear

S1 = 0.0371
ROWS = 13


def _case(c: int, zp, out_dtype: int, alpha: str, seed: int):
    rng = np.random.default_rng(seed)
    alpha_c = {"random": rng.integers(0, 4, c), "zeros": np.zeros(c, np.int64),
               "threes": np.full(c, 3), "ramp": np.arange(c) % 4}[alpha]
    m = (2.0 ** -alpha_c).astype(np.float32)
    out_zp = 128 if out_dtype == TensorProto.UINT8 else 0
    p = layernorm_params(rng.normal(1, 0.4, c), rng.normal(0, 0.5, c), S1, alpha_c, int(zp), 0.03,
                         out_zp, eps=1e-6, output_dtype=out_dtype)
    a = rng.normal(0, 4, (ROWS, c)).astype(np.float32)
    b = rng.normal(0, 1, (ROWS, c)).astype(np.float32)
    a[0] = -b[0]  # all-zero sum: Y is the quantized beta
    a[1] = np.resize(np.float32([1e6, -1e6]), c)  # every code saturated, maximal variance
    a[2] = np.arange(c) * np.float32(S1) / 2 / m - b[2]  # near rounding ties
    a[3] = 1e30  # all saturated at the top: D = 0
    return m, p, a, b


def _model(c: int, zp, p, *, fused: bool) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.float32(S1), "s"), numpy_helper.from_array(zp, "z"),
             numpy_helper.from_array(p.alpha, "al"), numpy_helper.from_array(p.gamma, "ga"),
             numpy_helper.from_array(p.beta, "be")]
    if fused:
        nodes = [helper.make_node("AddIntLayerNorm", ["a", "b", "m", "s", "z", "al", "ga", "be"],
                                  ["y", "sum"], domain=DOMAIN, **p.attributes())]
    else:
        nodes = [helper.make_node("AddMulQuantizeLinear", ["a", "b", "m", "s", "z"],
                                  ["x", "sum"], domain=DOMAIN),
                 helper.make_node("IntLayerNorm", ["x", "al", "ga", "be"], ["y"], domain=DOMAIN,
                                  **p.attributes())]
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, c]) for n in ("a", "b")]
    ins.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, [c]))
    outs = [helper.make_tensor_value_info("y", p.output_dtype, None),
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "g", ins, outs, inits)
    return add_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                           ir_version=8))


def _run(model: onnx.ModelProto, feeds: dict, lib: str | None) -> list[np.ndarray]:
    so = session_options(custom_ops=False)
    if lib is not None:
        so.register_custom_ops_library(lib)
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


CASES = [(1, np.uint8(0), 2, "random"), (7, np.int8(-7), 3, "threes"),
         (16, np.uint8(255), 2, "zeros"), (37, np.uint8(3), 3, "ramp"),
         (384, np.uint8(128), 2, "random"), (391, np.int8(5), 2, "random"),
         (4101, np.int8(-128), 3, "ramp")]


@pytest.mark.parametrize(("c", "zp", "out_dtype", "alpha"), CASES)
def test_kernel_equals_the_unfused_pair(library, c, zp, out_dtype, alpha):
    m, p, a, b = _case(c, zp, out_dtype, alpha, seed=c)
    feeds = {"a": a, "b": b, "m": m}
    want = add_int_layer_norm(a, b, m, S1, zp, p.alpha, p.gamma, p.beta, **p.attributes())
    codes, _ = add_mul_quantize_linear(a, b, m, S1, zp)
    assert np.array_equal(want[0], int_layer_norm(codes, p.alpha, p.gamma, p.beta,
                                                  **p.attributes()))
    assert len(np.unique(want[0])) > 2 or c < 16  # not a degenerate all-saturated answer
    backends = [(_model(c, zp, p, fused=True), library), (_model(c, zp, p, fused=False), library)]
    if c <= 391:  # the inlined function is slow on wide rows
        backends.append((_model(c, zp, p, fused=True), None))
    for model, lib in backends:
        got = _run(model, feeds, lib)
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_array_equal(g, w)


def test_broadcast_residual_and_leading_dims(library):
    c, zp = 200, np.uint8(9)
    m, p, a, b = _case(c, zp, TensorProto.UINT8, "random", seed=5)
    a3 = np.stack([a, a[::-1] * 0.5]).astype(np.float32)  # [2, 13, C] with B [13, C] repeated
    model = _model(c, zp, p, fused=True)
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("a", TensorProto.FLOAT,
                                                                [2, ROWS, c]))
    got = _run(model, {"a": a3, "b": b, "m": m}, library)
    want = add_int_layer_norm(a3, b, m, S1, zp, p.alpha, p.gamma, p.beta, **p.attributes())
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_zero_point_mismatch_is_an_error(library):
    c, zp = 16, np.uint8(9)
    m, p, a, b = _case(c, zp, TensorProto.UINT8, "random", seed=6)
    model = _model(c, zp, p, fused=True)
    next(x for x in model.graph.node[0].attribute if x.name == "zero_point").i = 10
    with pytest.raises(Exception, match="zero_point must equal x_zero_point"):
        _run(model, {"a": a, "b": b, "m": m}, library)


_PORTABLE = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[2])
import test_add_int_layer_norm as t
from onnxvq.plugins.reference import int_layer_norm
from onnxvq.plugins.reference.fused import add_int_layer_norm, add_mul_quantize_linear
lib = sys.argv[1]
for c, zp, od, alpha in t.CASES:
    m, p, a, b = t._case(c, zp, od, alpha, seed=c)
    want = add_int_layer_norm(a, b, m, t.S1, zp, p.alpha, p.gamma, p.beta, **p.attributes())
    got = t._run(t._model(c, zp, p, fused=True), {"a": a, "b": b, "m": m}, lib)
    assert all(np.array_equal(g, w) for g, w in zip(got, want)), ("AddIntLayerNorm", c)
    codes, _ = add_mul_quantize_linear(a, b, m, t.S1, zp)
    got = t._run(t._model(c, zp, p, fused=False), {"a": a, "b": b, "m": m}, lib)
    assert np.array_equal(got[0], int_layer_norm(codes, p.alpha, p.gamma, p.beta,
                                                 **p.attributes())), ("IntLayerNorm", c)
print("ok")
"""


def test_portable_rows_without_avx512(library):
    # ONNXVQ_NO_AVX512 is read once per process: the AVX2/scalar rows need a fresh one.
    env = {**os.environ, "ONNXVQ_NO_AVX512": "1"}
    here = os.path.dirname(__file__)
    proc = subprocess.run([sys.executable, "-c", _PORTABLE, library, here], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_polygraphy_reference_equals_the_kernel(library):
    from polygraphy.backend.onnx import GsFromOnnx
    from polygraphy.backend.pluginref import PluginRefRunner

    from onnxvq.plugins.polygraphy_ext import register_references

    c, zp = 37, np.int8(-3)
    m, p, a, b = _case(c, zp, TensorProto.UINT8, "ramp", seed=8)
    model = _model(c, zp, p, fused=True)
    register_references()
    feeds = {"a": a, "b": b, "m": m}
    with PluginRefRunner(GsFromOnnx(model)) as ref:
        got = ref.infer(feeds)
    want = _run(model, feeds, library)
    np.testing.assert_array_equal(got["y"], want[0])
    np.testing.assert_array_equal(got["sum"], want[1])


def test_changed_parameters_between_runs_are_used(library):
    """The kernels keep their tables while alpha/gamma/beta/M/x_scale stay the same bytes; given as
    graph inputs that change between two runs of one session, each run still equals the pair."""
    c, zp = 40, np.uint8(6)
    names = ("al", "ga", "be", "m", "s")
    for fused in (True, False):
        attrs = _case(c, zp, TensorProto.UINT8, "random", seed=9)[1].attributes()
        model = _model(c, zp, _case(c, zp, TensorProto.UINT8, "random", seed=9)[1], fused=fused)
        graph = model.graph
        keep = [t for t in graph.initializer if t.name not in names]
        del graph.initializer[:]
        graph.initializer.extend(keep)
        del graph.input[2:]
        graph.input.extend([
            helper.make_tensor_value_info("m", TensorProto.FLOAT, [c]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("al", TensorProto.UINT8, [c]),
            helper.make_tensor_value_info("ga", TensorProto.INT32, [c]),
            helper.make_tensor_value_info("be", TensorProto.INT64, [c])])
        so = session_options(custom_ops=False)
        so.register_custom_ops_library(library)
        sess = ort.InferenceSession(model.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
        for seed in (10, 11, 10):
            m, p, a, b = _case(c, zp, TensorProto.UINT8, "random", seed=seed)
            scale = np.float32(S1 * (1 + seed % 2))
            feeds = {"a": a, "b": b, "m": m, "s": np.asarray(scale), "al": p.alpha, "ga": p.gamma,
                     "be": p.beta}
            want = add_int_layer_norm(a, b, m, scale, zp, p.alpha, p.gamma, p.beta, **attrs)
            for g, w in zip(sess.run(None, feeds), want, strict=True):
                np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("x_scale", [S1, 2.0 ** -70, 3.0e20])
def test_avx2_rows_division_shortcut_and_float_output(library, x_scale):
    """The AVX2 rows replace the input quantizer's division by a checked multiply (only for
    x_scale in [2^-64, 2^64]; outside it they divide) and decide most outputs in float32: sums
    that land on and next to half-integer quotients, and DeiT-S-like rows, equal the pair."""
    c, zp = 384, np.uint8(119)
    m, p, a, b = _case(c, zp, TensorProto.UINT8, "random", seed=12)
    rng = np.random.default_rng(13)
    a = rng.normal(0, 2, (64, c)).astype(np.float32)
    b = rng.normal(0, 0.5, (64, c)).astype(np.float32)
    k = rng.integers(-300, 300, (16, c)) + 0.5  # exact and off-by-an-ulp half-integer quotients
    s = (k * x_scale / m).astype(np.float32)
    s[8:] = np.nextafter(s[8:], np.float32(np.inf))
    a[:16], b[:16] = s, 0
    a[16:20] *= np.float32(x_scale / S1)  # a realistic spread of codes at the other scales
    model = _model(c, zp, p, fused=True)
    next(t for t in model.graph.initializer if t.name == "s").CopyFrom(
        numpy_helper.from_array(np.float32(x_scale), "s"))
    got = _run(model, {"a": a, "b": b, "m": m}, library)
    want = add_int_layer_norm(a, b, m, np.float32(x_scale), zp, p.alpha, p.gamma, p.beta,
                              **p.attributes())
    assert len(np.unique(want[0])) > 100
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
