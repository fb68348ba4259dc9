"""The native ONNX Runtime kernels (plugins/ort) equal the integer references bit for bit, and agree
with the inlined local functions; plus the build/locate logic of onnxvq.plugins.native."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto

from onnxvq.core.runtime import session_options
from onnxvq.plugins import native
from onnxvq.plugins.ops import (
    make_int_layer_norm_node,
    make_log_int_matmul_node,
    make_log_int_softmax_node,
)
from onnxvq.plugins.reference import (
    SoftmaxConstants,
    int_exp,
    int_layer_norm,
    layernorm_params,
    log_int_matmul,
    log_int_softmax,
    softmax_constants,
)


def _model(graph: gs.Graph, *, functions: bool) -> onnx.ModelProto:
    model = gs.export_onnx(graph)
    model.ir_version = 10
    if not functions:  # only the kernel can run such a model
        del model.functions[:]
    return model


def _run(graph: gs.Graph, feeds: dict[str, np.ndarray], lib: str | None,
         functions: bool = False) -> list[np.ndarray]:
    so = session_options(custom_ops=False)
    if lib is not None:
        so.register_custom_ops_library(lib)
    model = _model(graph, functions=functions or lib is None)
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _check_all_backends(graph, feeds, want, lib, *, with_functions=True):
    got = _run(graph, feeds, lib)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)
    if with_functions:  # kernel registered and function present: same answer as the function
        for g, f in zip(got, _run(graph, feeds, None), strict=True):
            np.testing.assert_array_equal(g, f)


# ---------------------------------------------------------------- IntLayerNorm

def _ln_params(rng, c, out_dtype=TensorProto.UINT8, eps=1e-6, alpha=None, zp=120):
    alpha = rng.integers(0, 4, c) if alpha is None else alpha
    out_zp = 128 if out_dtype == TensorProto.UINT8 else 0
    return layernorm_params(rng.normal(1, 0.4, c), rng.normal(0, 0.5, c), 0.01, alpha, zp,
                            0.03, out_zp, eps=eps, output_dtype=out_dtype)


def _ln_codes(rng, shape, dtype, zp):
    info = np.iinfo(dtype)
    q = rng.integers(info.min, info.max + 1, shape).astype(dtype)
    flat = q.reshape(-1, shape[-1])
    c = shape[-1]
    flat[0] = zp  # all-equal row: Y must be the quantized beta
    if flat.shape[0] > 3:
        flat[1] = np.resize(np.array([info.min, info.max], dtype), c)  # maximal variance
        flat[2] = np.clip(rng.integers(zp - 1, zp + 2, c), info.min, info.max)  # tiny variance
        flat[3] = info.max  # all-equal at the extreme code
    return q


@pytest.mark.parametrize(
    ("shape", "in_dtype", "out_dtype"),
    [
        ((1, 7, 384), np.uint8, TensorProto.UINT8),
        ((64, 9, 192), np.uint8, TensorProto.INT8),
        ((4, 5, 96), np.int8, TensorProto.INT8),
        ((2, 4, 4096), np.int8, TensorProto.UINT8),
        ((5, 1), np.uint8, TensorProto.UINT8),
    ],
)
def test_int_layer_norm_kernel_is_bit_exact(library, shape, in_dtype, out_dtype):
    rng = np.random.default_rng(shape[-1] + out_dtype)
    c, zp = shape[-1], (120 if in_dtype == np.uint8 else -3)
    params = [
        _ln_params(rng, c, out_dtype, zp=zp),
        _ln_params(rng, c, out_dtype, eps=0.0, alpha=np.full(c, 3), zp=zp),
        _ln_params(rng, c, out_dtype, eps=10.0, alpha=np.zeros(c, np.int64), zp=zp),
    ]
    g = gs.Graph(opset=17)
    x = gs.Variable("x", in_dtype, list(shape))
    g.inputs = [x]
    g.outputs = [make_int_layer_norm_node(g, x, p, name=f"ln{i}") for i, p in enumerate(params)]
    q = _ln_codes(rng, shape, in_dtype, zp)
    want = [int_layer_norm(q, p.alpha, p.gamma, p.beta, **p.attributes()) for p in params]
    _check_all_backends(g, {"x": q}, want, library, with_functions=shape[-1] <= 384)


def test_int_layer_norm_all_equal_rows_give_quantized_beta(library):
    c = 64  # one alpha for all channels, so equal codes mean equal xt
    p = _ln_params(np.random.default_rng(3), c, eps=0.0, alpha=np.full(c, 2))
    g = gs.Graph(opset=17)
    x = gs.Variable("x", np.uint8, [3, c])
    g.inputs, g.outputs = [x], [make_int_layer_norm_node(g, x, p, name="ln")]
    q = np.stack([np.full(c, v, np.uint8) for v in (0, 120, 255)])
    (got,) = _run(g, {"x": q}, library)
    beta_q = np.clip(np.floor(p.beta / 2.0 ** (16 + p.gamma_shift) + 0.5), 0, 255)
    np.testing.assert_array_equal(got, np.broadcast_to(beta_q, (3, c)))


def test_int_layer_norm_rejects_bad_parameters(library):
    c = 8
    p = _ln_params(np.random.default_rng(4), c)
    bad = type(p)(alpha=np.full(c, 5, np.uint8), gamma=p.gamma, beta=p.beta,
                  zero_point=p.zero_point, epsilon=p.epsilon, gamma_shift=p.gamma_shift)
    g = gs.Graph(opset=17)
    x = gs.Variable("x", np.uint8, [2, c])
    g.inputs, g.outputs = [x], [make_int_layer_norm_node(g, x, bad, name="ln")]
    with pytest.raises(Exception, match="alpha values must lie in 0..3"):
        _run(g, {"x": np.zeros((2, c), np.uint8)}, library)


# ---------------------------------------------------------------- LogIntSoftmax

def _scores(rng, shape, dtype, spread):
    x = rng.normal(0, spread, shape)
    info = np.iinfo(dtype)
    x = np.clip(np.round(x), info.min, info.max).astype(dtype)
    flat = x.reshape(-1, shape[-1])
    flat[0] = 7  # all-equal row
    if flat.shape[0] > 2:
        flat[1] = info.min
        flat[1, 0] = info.max  # one dominant score, the rest underflow
        flat[2] = rng.choice([info.min, info.max], shape[-1])  # extreme codes only
    return x


@pytest.mark.parametrize(
    ("shape", "dtype", "scale", "bits"),
    [
        ((1, 3, 197), np.int8, 0.08, 4),
        ((64, 50), np.int8, 0.02, 4),
        ((64, 6, 31), np.int32, 1e-3, 4),
        ((2, 4096), np.int32, 3e-4, 4),
        ((3, 3, 77), np.int8, 0.3, 1),
        ((4, 129), np.int32, 5e-3, 8),
        ((4, 65), np.int8, 0.05, 6),
        ((6, 1), np.int32, 0.01, 4),
    ],
)
@pytest.mark.parametrize("octave_steps", [1, 2])  # log2 and log-sqrt(2) codes
def test_log_int_softmax_kernel_is_bit_exact(library, shape, dtype, scale, bits, octave_steps):
    rng = np.random.default_rng(shape[-1] + bits + octave_steps - 1)
    consts = softmax_constants(scale, bits, octave_steps=octave_steps)
    spread = 40.0 if dtype == np.int8 else 3.0 / scale
    x = _scores(rng, shape, dtype, spread)  # all-equal, one-hot and extreme-code rows included
    g = gs.Graph(opset=17)
    xv = gs.Variable("x", dtype, list(shape))
    g.inputs, g.outputs = [xv], [make_log_int_softmax_node(g, xv, consts, name="sm")]
    want = log_int_softmax(x, **consts.attributes())
    _check_all_backends(g, {"x": x}, [want], library)


def test_log_int_softmax_int32_full_range(library):
    rng = np.random.default_rng(9)
    consts = softmax_constants(2e-7, 4)  # the smallest scale with n >= 0: the widest constants
    x = rng.integers(-(2**31), 2**31, (8, 300), dtype=np.int64).astype(np.int32)
    x[:, :5] = 2**31 - 1 - rng.integers(0, 10**7, (8, 5))
    g = gs.Graph(opset=17)
    xv = gs.Variable("x", np.int32, [8, 300])
    g.inputs, g.outputs = [xv], [make_log_int_softmax_node(g, xv, consts, name="sm")]
    _check_all_backends(g, {"x": x}, [log_int_softmax(x, **consts.attributes())], library)


@pytest.mark.parametrize("bits", [4, 8])
def test_log_int_softmax_non_monotone_exp_table(library, bits):
    # softmax_constants always has b > -x0, but the kernel takes any valid attributes: with
    # b < -x0 - 1 the term r + b changes sign inside a period, so the int8 exp table rises
    # again and the kernel must leave its threshold path for the per-value lookup.
    consts = SoftmaxConstants(x0=-20, b=5, c=3, n=30, bits=bits)
    ramp = -np.arange(256, dtype=np.int64)[None, :]
    table = int_exp(ramp, x0=-20, b=5, c=3, n=30)[0]
    assert np.any(np.diff(table) > 0)  # the table really is not monotone
    rng = np.random.default_rng(21 + bits)
    x = rng.integers(-128, 128, (5, 7, 197)).astype(np.int8)
    x[0, 0] = np.resize(np.arange(-128, 128, dtype=np.int8), 197)  # every u from 0 on
    x[0, 1, :40] = 127
    x[0, 1, 40:] = -128  # u = 255 only at the far end
    g = gs.Graph(opset=17)
    xv = gs.Variable("x", np.int8, list(x.shape))
    g.inputs, g.outputs = [xv], [make_log_int_softmax_node(g, xv, consts, name="sm")]
    want = log_int_softmax(x, **consts.attributes())
    assert len(np.unique(want)) > 4  # many codes, not one degenerate value
    _check_all_backends(g, {"x": x}, [want], library)


def _fuzz_constants(rng: np.random.Generator) -> list[SoftmaxConstants]:
    # Derived constants over the whole scale range (the smallest gives a table too flat for the
    # kernel's threshold key table, so it takes its search fallback), then raw attributes: small n
    # floors the table into runs of equal values and zeros, small b makes it non-monotone.
    out = [softmax_constants(s, int(rng.integers(1, 9)))
           for s in (6e-4, 2e-3, 0.01, 0.03, 0.05, 0.08, 0.15, 0.3, 0.6)]
    while len(out) < 21:
        x0 = -int(rng.integers(1, 300))
        b = int(rng.integers(0, 3 * -x0 + 2))
        c = int(rng.integers(0, 4 * b * b + 10))
        pmax = max(b * b, (x0 + 1 + b) ** 2) + c
        n_max = 63 - 16 - pmax.bit_length() - 1
        if n_max >= 0:
            n = int(rng.integers(0, min(n_max, 12) + 1)) if rng.random() < 0.5 else n_max
            out.append(SoftmaxConstants(x0=x0, b=b, c=c, n=n, bits=int(rng.integers(1, 9))))
    return out


@pytest.mark.parametrize(("octave_steps", "seed"), [(1, 2024), (2, 2025)])
def test_log_int_softmax_int8_fuzz(library, octave_steps, seed):
    # The int8 kernel's row paths (threshold key table, search fallback, per-value lookup) against
    # the reference on random constants, row lengths and score spreads, for either code base.
    rng = np.random.default_rng(seed)
    for i, base in enumerate(_fuzz_constants(rng)):
        consts = SoftmaxConstants(**{**base.attributes(), "octave_steps": octave_steps})
        n = int(rng.choice([1, 5, 31, 32, 33, 127, 128, 129, 197, 300]))
        spread = float(rng.choice([2.0, 20.0, 60.0, 200.0]))
        x = np.clip(np.round(rng.normal(0, spread, (48, n))), -128, 127).astype(np.int8)
        x[0] = rng.integers(-128, 128, n)  # a full-range row
        x[1, : n // 2] = 127  # two values only: the widest gap
        x[1, n // 2 :] = -128
        g = gs.Graph(opset=17)
        xv = gs.Variable("x", np.int8, list(x.shape))
        g.inputs, g.outputs = [xv], [make_log_int_softmax_node(g, xv, consts, name="sm")]
        want = log_int_softmax(x, **consts.attributes())
        got = _run(g, {"x": x}, library)[0]
        np.testing.assert_array_equal(got, want, err_msg=f"case {i}: {consts}")


# ---------------------------------------------------------------- LogIntMatMul

@pytest.mark.parametrize(
    ("lead", "r", "k", "d", "vdtype", "bits", "zp", "octave_steps"),
    [
        ((1, 6), 197, 197, 64, np.int8, 4, 0, 1),
        ((64,), 5, 33, 8, np.uint8, 4, 128, 1),
        ((2,), 3, 4096, 16, np.int8, 4, -7, 1),
        ((2, 2), 7, 300, 5, np.uint8, 8, 255, 1),
        ((3,), 4, 20, 9, np.int8, 5, 127, 1),
        ((1, 6), 197, 197, 64, np.int8, 4, 0, 2),
        ((64,), 5, 33, 8, np.uint8, 4, 128, 2),
        ((2,), 3, 4096, 16, np.int8, 4, -7, 2),
        ((2, 2), 7, 300, 5, np.uint8, 8, 255, 2),
        ((3,), 4, 20, 9, np.int8, 3, 127, 2),
    ],
)
def test_log_int_matmul_kernel_is_bit_exact(library, lead, r, k, d, vdtype, bits, zp,
                                            octave_steps):
    rng = np.random.default_rng(r * k + bits + octave_steps - 1)
    codes = rng.integers(0, 256, (*lead, r, k)).astype(np.uint8)  # every code, zero codes too
    codes.reshape(-1, k)[0] = 0  # the largest weights everywhere
    if octave_steps == 2:
        codes.reshape(-1, k)[1] = 1  # the largest odd weights
    info = np.iinfo(vdtype)
    v = rng.integers(info.min, info.max + 1, (*lead, k, d)).astype(vdtype)
    v.reshape(-1, d)[: min(k, 8)] = info.min if zp >= 0 else info.max  # extreme |V - zp|
    g = gs.Graph(opset=17)
    a_var = gs.Variable("a", np.uint8, list(codes.shape))
    v_var = gs.Variable("v", vdtype, list(v.shape))
    g.inputs = [a_var, v_var]
    g.outputs = [make_log_int_matmul_node(g, a_var, v_var, bits=bits, zero_point=zp,
                                          octave_steps=octave_steps, name="mm")]
    want = log_int_matmul(codes, v, bits=bits, zero_point=zp, octave_steps=octave_steps)
    _check_all_backends(g, {"a": codes, "v": v}, [want], library, with_functions=k <= 300)


_NO_VNNI_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np, onnx_graphsurgeon as gs, onnxruntime as ort
    from onnxvq.plugins.ops import make_log_int_matmul_node
    from onnxvq.plugins.reference import log_int_matmul
    from onnxvq.core.runtime import session_options
    lib, lead, r, k, d, bits, zp, steps = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:])
    rng = np.random.default_rng(r * k + bits)
    a = rng.integers(0, 256, (lead, r, k)).astype(np.uint8)
    v = rng.integers(-128, 128, (lead, k, d)).astype(np.int8)
    g = gs.Graph(opset=17)
    av = gs.Variable("a", np.uint8, list(a.shape))
    vv = gs.Variable("v", np.int8, list(v.shape))
    g.inputs = [av, vv]
    g.outputs = [make_log_int_matmul_node(g, av, vv, bits=bits, zero_point=zp,
                                          octave_steps=steps, name="mm")]
    model = gs.export_onnx(g)
    model.ir_version = 10
    del model.functions[:]
    so = session_options(custom_ops=False)
    so.register_custom_ops_library(lib)
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"a": a, "v": v})
    want = log_int_matmul(a, v, bits=bits, zero_point=zp, octave_steps=steps)
    np.testing.assert_array_equal(got, want)
""")


@pytest.mark.parametrize(("lead", "r", "k", "d", "bits", "zp", "octave_steps"),
                         [(6, 197, 197, 64, 4, 0, 1), (2, 7, 300, 5, 8, -7, 1),
                          (6, 197, 197, 64, 4, 0, 2)])
def test_log_int_matmul_avx2_path_without_vnni(library, lead, r, k, d, bits, zp, octave_steps):
    # ONNXVQ_NO_VNNI is read once per process, so the AVX2 path needs a fresh one; on a CPU
    # without AVX-VNNI both tests run the AVX2 path anyway.
    env = {**os.environ, "ONNXVQ_NO_VNNI": "1"}
    args = [str(a) for a in (lead, r, k, d, bits, zp, octave_steps)]
    proc = subprocess.run([sys.executable, "-c", _NO_VNNI_SCRIPT, library, *args], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize(("octave_steps", "seed"), [(1, 12), (2, 13)])
def test_softmax_then_matmul_chain(library, octave_steps, seed):
    rng = np.random.default_rng(seed)
    consts = softmax_constants(0.05, 4, octave_steps=octave_steps)
    scores = rng.integers(-128, 128, (2, 6, 197, 197)).astype(np.int8)
    v = rng.integers(-128, 128, (2, 6, 197, 64)).astype(np.int8)
    g = gs.Graph(opset=17)
    s_var = gs.Variable("s", np.int8, list(scores.shape))
    v_var = gs.Variable("v", np.int8, list(v.shape))
    g.inputs = [s_var, v_var]
    codes = make_log_int_softmax_node(g, s_var, consts, name="sm")
    g.outputs = [make_log_int_matmul_node(g, codes, v_var, bits=4, octave_steps=octave_steps,
                                          name="mm")]
    want = log_int_matmul(log_int_softmax(scores, **consts.attributes()), v, bits=4,
                          octave_steps=octave_steps)
    _check_all_backends(g, {"s": scores, "v": v}, [want], library)


# ---------------------------------------------------------------- log-sqrt(2) (octave_steps=2)

def test_log_sqrt2_softmax_int32_full_range_and_non_monotone(library):
    rng = np.random.default_rng(31)
    x = rng.integers(-(2**31), 2**31, (8, 300), dtype=np.int64).astype(np.int32)
    x[:, :5] = 2**31 - 1 - rng.integers(0, 10**7, (8, 5))
    x8 = rng.integers(-128, 128, (5, 7, 197)).astype(np.int8)
    x8[0, 0] = np.resize(np.arange(-128, 128, dtype=np.int8), 197)
    cases = [(x, softmax_constants(2e-7, 4, octave_steps=2)),
             (x8, SoftmaxConstants(x0=-20, b=5, c=3, n=30, bits=4, octave_steps=2)),
             (x8, SoftmaxConstants(x0=-20, b=5, c=3, n=30, bits=8, octave_steps=2))]
    for xs, consts in cases:
        g = gs.Graph(opset=17)
        xv = gs.Variable("x", xs.dtype, list(xs.shape))
        g.inputs, g.outputs = [xv], [make_log_int_softmax_node(g, xv, consts, name="sm")]
        _check_all_backends(g, {"x": xs}, [log_int_softmax(xs, **consts.attributes())], library)


def test_bad_octave_steps_is_an_error(library):
    g = gs.Graph(opset=17)
    xv = gs.Variable("x", np.int8, [2, 5])
    consts = softmax_constants(0.05, 4)
    g.inputs, g.outputs = [xv], [make_log_int_softmax_node(g, xv, consts, name="sm")]
    g.nodes[0].attrs["octave_steps"] = 3
    with pytest.raises(Exception, match="octave_steps"):
        _run(g, {"x": np.zeros((2, 5), np.int8)}, library)


# ---------------------------------------------------------------- build and lookup

def test_library_exports_only_the_entry_point(library):
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not installed")
    out = subprocess.run([nm, "-D", "--defined-only", library], capture_output=True, text=True,
                         check=True).stdout
    assert [line.split()[-1] for line in out.splitlines()] == ["RegisterCustomOps"]
    readelf = shutil.which("readelf")
    if readelf is not None:  # never linked against an onnxruntime .so
        dyn = subprocess.run([readelf, "-d", library], capture_output=True, text=True).stdout
        assert "onnxruntime" not in dyn


def test_no_native_env_disables_lookup(library, monkeypatch):
    monkeypatch.setenv("ONNXVQ_NO_NATIVE", "1")
    assert native.ort_library_path(build=True) is None
    assert not native.native_available()


def test_library_override(library, monkeypatch, tmp_path):
    monkeypatch.setenv("ONNXVQ_ORT_LIBRARY", library)
    assert native.ort_library_path(build=False) == str(Path(library).resolve())
    monkeypatch.setenv("ONNXVQ_ORT_LIBRARY", str(tmp_path / "missing.so"))
    with pytest.raises(native.NativeBuildError, match="is not a file"):
        native.ort_library_path(build=False)
    assert not native.native_available()


def test_missing_compiler_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("ONNXVQ_ORT_LIBRARY", raising=False)
    monkeypatch.delenv("ONNXVQ_NO_NATIVE", raising=False)
    monkeypatch.setenv("ONNXVQ_ORT_BUILD_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler-onnxvq")
    assert native.ort_library_path(build=False) is None
    with pytest.raises(native.NativeBuildError, match="no C\\+\\+ compiler"):
        native.ort_library_path(build=True)
    assert not native.native_available(build=True)
