"""TensorRT plugins: Triton kernels bit-exact with the numpy reference, PTX for TensorRT, engines.

The kernels run on the CPU in Triton's interpreter; TRITON_INTERPRET must be set before the
kernels module is first imported (``@triton.jit`` decides at decoration time). The engine tests
need tensorrt and a GPU and skip with the reason otherwise.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from onnx import TensorProto  # noqa: E402

pytest.importorskip("triton", reason="the Triton kernels need triton")
pytest.importorskip("torch", reason="Triton's interpreter runs on torch CPU tensors")

from onnxvq.plugins import reference as ref  # noqa: E402
from onnxvq.plugins.trt import aot, launch  # noqa: E402
from onnxvq.verify.trt import BackendUnavailable, unavailable_reason  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
if not INTERPRETED:
    pytest.skip("TRITON_INTERPRET was set to something else", allow_module_level=True)


def _ln_params(rng, c, zp=128, out_dtype=TensorProto.UINT8, eps=1e-6):
    out_zp = 120 if out_dtype == TensorProto.UINT8 else -3
    return ref.layernorm_params(
        rng.normal(1.0, 0.3, c), rng.normal(0.0, 0.2, c), 0.05, rng.integers(0, 4, c), zp,
        0.03, out_zp, eps=eps, output_dtype=out_dtype,
    )


def _check_ln(x, p, **kw):
    got = launch.int_layer_norm(x, p.alpha, p.gamma, p.beta, **p.attributes(), **kw)
    want = ref.int_layer_norm(x, p.alpha, p.gamma, p.beta, **p.attributes())
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    return got


@pytest.mark.parametrize("shape", [(1, 7, 384), (64, 5, 96), (3, 1, 1), (2, 3, 200)])
def test_int_layer_norm_random(shape):
    rng = np.random.default_rng(sum(shape))
    x = rng.integers(0, 256, shape).astype(np.uint8)
    _check_ln(x, _ln_params(rng, shape[-1]))


def test_int_layer_norm_int8_in_int8_out():
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, (4, 9, 64)).astype(np.int8)
    y = _check_ln(x, _ln_params(rng, 64, zp=-5, out_dtype=TensorProto.INT8))
    assert y.min() < 0 < y.max()


def test_int_layer_norm_all_equal_rows_give_quantized_beta():
    rng = np.random.default_rng(2)
    x = np.full((2, 4, 48), 77, np.uint8)
    p = _ln_params(rng, 48, eps=0.0)  # epsilon 0 and sigma 0: the max(sig, 1) case
    p = ref.LayerNormParams(np.zeros(48, np.uint8), p.gamma, p.beta, 128, 0, p.gamma_shift)
    y = _check_ln(x, p)
    want = np.clip(ref.rnd_shift(p.beta, 16 + p.gamma_shift), 0, 255)
    np.testing.assert_array_equal(y[0, 0], want)


def test_int_layer_norm_extreme_codes_saturate():
    c = 256
    gamma = np.ones(c)
    gamma[1] = -1.0
    p = ref.layernorm_params(gamma, np.zeros(c), 0.05, np.full(c, 3), 0, 0.03, 120)
    x = np.zeros((3, c), np.uint8)
    x[0, 0] = x[1, 1] = 255  # one outlier per row: |z| = sqrt(C-1) std, far beyond the range
    x[2] = np.where(np.arange(c) % 2 == 0, 0, 255)
    y = _check_ln(x, p)
    assert y[0, 0] == 255 and y[1, 1] == 0  # both clamps are reached


def test_int_layer_norm_long_rows():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (2, ref.MAX_CHANNELS)).astype(np.uint8)
    _check_ln(x, _ln_params(rng, ref.MAX_CHANNELS), rows_per_program=1)


@pytest.mark.slow
def test_int_layer_norm_deit_small_batch_64():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (64, 197, 384)).astype(np.uint8)
    _check_ln(x, _ln_params(rng, 384))


def _check_softmax(x, k, **kw):
    got = launch.log_int_softmax(x, **k.attributes(), **kw)
    want = ref.log_int_softmax(x, **k.attributes())
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
    return got


@pytest.mark.parametrize("bits", [1, 2, 4, 5, 8])
def test_log_int_softmax_random_int8(bits):
    rng = np.random.default_rng(bits)
    x = rng.integers(-128, 128, (2, 3, 33, 33)).astype(np.int8)
    _check_softmax(x, ref.softmax_constants(0.08, bits))


@pytest.mark.parametrize("scale", [0.6, 1e-3, 3e-6])
def test_log_int_softmax_int32_wide_range(scale):
    rng = np.random.default_rng(7)
    x = rng.integers(-(2**31), 2**31, (5, 64), dtype=np.int64).astype(np.int32)
    x[:, 0] = 2**31 - 1
    x[:, 1] = -(2**31)  # q far beyond 63: the clamped shift underflows to the zero code
    y = _check_softmax(x, ref.softmax_constants(scale, 4))
    assert np.all(y[:, 0] == 0)


def test_log_int_softmax_all_equal_and_single_element_rows():
    k = ref.softmax_constants(0.05, 4)
    equal = _check_softmax(np.full((3, 197), 17, np.int8), k)
    assert np.all(equal == equal[0, 0])
    single = _check_softmax(np.array([[-128], [127], [0]], np.int8), k)
    np.testing.assert_array_equal(single, 0)


def test_log_int_softmax_long_rows_stream_in_chunks():
    rng = np.random.default_rng(8)
    n = 2 * launch.SOFTMAX_BLOCK + 37
    x = rng.integers(-128, 128, (3, n)).astype(np.int8)
    _check_softmax(x, ref.softmax_constants(0.02, 4), rows_per_program=1)


def test_log_int_softmax_batch_64():
    rng = np.random.default_rng(9)
    x = rng.integers(-128, 128, (64, 2, 17, 17)).astype(np.int8)
    _check_softmax(x, ref.softmax_constants(0.1, 4), rows_per_program=64)


@pytest.mark.slow
def test_log_int_softmax_deit_small_attention():
    rng = np.random.default_rng(10)
    x = rng.integers(-128, 128, (8, 6, 197, 197)).astype(np.int8)
    _check_softmax(x, ref.softmax_constants(0.07, 4), rows_per_program=64)


def _check_matmul(a, v, bits, zp):
    got = launch.log_int_matmul(a, v, bits=bits, zero_point=zp)
    want = ref.log_int_matmul(a, v, bits=bits, zero_point=zp)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    return got


def test_log_int_matmul_on_softmax_codes():
    rng = np.random.default_rng(11)
    k = ref.softmax_constants(0.08, 4)
    scores = rng.integers(-128, 128, (2, 3, 37, 37)).astype(np.int8)
    a = ref.log_int_softmax(scores, **k.attributes())
    v = rng.integers(-128, 128, (2, 3, 37, 40)).astype(np.int8)
    _check_matmul(a, v, 4, 0)


@pytest.mark.parametrize("bits", [4, 8])
def test_log_int_matmul_extreme_codes(bits):
    rng = np.random.default_rng(12)
    m = ref.max_code(bits)
    a = rng.choice(np.array([0, m, m + 1, 255], np.uint8), (1, 19, 53))  # weights 2^M, 1, 0, 0
    v = np.where(rng.random((1, 53, 21)) < 0.5, 0, 255).astype(np.uint8)
    y = _check_matmul(a, v, bits, 7)
    assert np.abs(y).max() > 2**31 if bits == 8 else True  # int64 accumulation is exercised


def test_log_int_matmul_batch_64_uint8_values():
    rng = np.random.default_rng(13)
    a = rng.integers(0, 17, (64, 9, 11)).astype(np.uint8)
    v = rng.integers(0, 256, (64, 11, 5)).astype(np.uint8)
    _check_matmul(a, v, 4, 128)


# ---------------------------------------------------------------- log-sqrt(2) (octave_steps=2)

@pytest.mark.parametrize("bits", [1, 4, 5, 8])
def test_log_sqrt2_softmax_random_int8(bits):
    rng = np.random.default_rng(bits + 60)
    x = rng.integers(-128, 128, (2, 3, 33, 33)).astype(np.int8)
    rows = x.reshape(-1, 33)
    rows[0] = 17  # all equal
    rows[1] = -128
    rows[1, 0] = 127  # one-hot at max-magnitude scores
    y = _check_softmax(x, ref.softmax_constants(0.08, bits, octave_steps=2))
    assert y.reshape(-1, 33)[1, 0] == 0


@pytest.mark.parametrize("scale", [0.6, 1e-3, 3e-6])
def test_log_sqrt2_softmax_int32_wide_range(scale):
    rng = np.random.default_rng(70)
    x = rng.integers(-(2**31), 2**31, (5, 64), dtype=np.int64).astype(np.int32)
    x[:, 0] = 2**31 - 1
    x[:, 1] = -(2**31)
    y = _check_softmax(x, ref.softmax_constants(scale, 4, octave_steps=2))
    assert np.all(y[:, 0] == 0)


def test_log_sqrt2_softmax_long_rows_and_batch():
    rng = np.random.default_rng(71)
    n = 2 * launch.SOFTMAX_BLOCK + 37
    _check_softmax(rng.integers(-128, 128, (3, n)).astype(np.int8),
                   ref.softmax_constants(0.02, 4, octave_steps=2), rows_per_program=1)
    _check_softmax(rng.integers(-128, 128, (64, 2, 17, 17)).astype(np.int8),
                   ref.softmax_constants(0.1, 4, octave_steps=2), rows_per_program=64)


@pytest.mark.parametrize("bits,zp", [(4, 0), (8, 7), (3, 128)])
def test_log_sqrt2_matmul(bits, zp):
    rng = np.random.default_rng(bits + 80)
    k = ref.softmax_constants(0.08, bits, octave_steps=2)
    a = ref.log_int_softmax(rng.integers(-128, 128, (2, 3, 37, 37)).astype(np.int8),
                            **k.attributes())
    a.reshape(-1, 37)[:2] = rng.choice(np.array([0, 1, ref.max_code(bits), 255], np.uint8),
                                       (2, 37))  # extreme codes: w(0), w(1), 181, zero
    v = rng.integers(0, 256, (2, 3, 37, 40)).astype(np.uint8)
    got = launch.log_int_matmul(a, v, bits=bits, zero_point=zp, octave_steps=2)
    want = ref.log_int_matmul(a, v, bits=bits, zero_point=zp, octave_steps=2)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)


def test_strip_params_refuses_a_read_hidden_param():
    ptx = (".entry k(\n.param .u64 k_param_0,\n.param .u64 k_param_1\n)\n"
           "{ ld.param.b64 %r, [k_param_1]; }")
    assert "k_param_1" not in aot.strip_params(ptx.replace("[k_param_1]", "[k_param_0]"), "k", 1)
    with pytest.raises(aot.KernelCompileError, match="reads its hidden parameter"):
        aot.strip_params(ptx, "k", 1)


PTX_SCRIPT = textwrap.dedent("""
    from triton.backends.compiler import GPUTarget
    from onnxvq.plugins.trt import aot, launch
    target = GPUTarget("cuda", 90, 32)
    cases = [
        ("IntLayerNorm", {"x": "u8", "y": "i8"}, launch.layer_norm_constexprs(
            384, zero_point=3, epsilon=100, gamma_shift=20, output_dtype=3, rows=8)),
        ("LogIntSoftmax", {"x": "i32"}, launch.softmax_constexprs(
            x0=-14, b=27, c=1000, n=30, bits=4, rows=4)),
        ("LogIntMatMul", {"v": "u8"}, launch.matmul_constexprs(bits=4, zero_point=0)),
        ("LogIntSoftmax", {"x": "i8"}, launch.softmax_constexprs(
            x0=-14, b=27, c=1000, n=30, bits=4, rows=4, octave_steps=2)),
        ("LogIntMatMul", {"v": "i8"}, launch.matmul_constexprs(bits=4, zero_point=0,
                                                               octave_steps=2)),
    ]
    for op, dtypes, consts in cases:
        k = aot.compile_kernel(op, dtypes, consts, target=target)
        entry = k.ptx[k.ptx.index(".entry"):]
        entry = entry[: entry.index(")")]
        print(op, k.name, k.block_x, entry.count(".param"), k.num_params, ".target sm_90" in k.ptx)
""")


@pytest.mark.slow
def test_kernels_compile_to_ptx_with_tensorrts_parameter_list():
    # Compiling needs real JITFunctions, so it runs in a process without the interpreter.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", PTX_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line.split() for line in proc.stdout.strip().splitlines()]
    assert [line[0] for line in lines] == ["IntLayerNorm", "LogIntSoftmax", "LogIntMatMul",
                                           "LogIntSoftmax", "LogIntMatMul"]
    for _, _, block_x, declared, expected, sm90 in lines:
        assert block_x == "128" and declared == expected and sm90 == "True"


def test_compile_refuses_interpreted_kernels():
    with pytest.raises(aot.KernelCompileError, match="TRITON_INTERPRET"):
        aot.compile_kernel("LogIntMatMul", {"v": "i8"}, launch.matmul_constexprs(bits=4,
                                                                                  zero_point=0))


REASON = unavailable_reason()


@pytest.mark.skipif(REASON is None, reason="TensorRT and a GPU are present")
def test_without_tensorrt_the_backend_says_why(tmp_path):
    from onnxvq.verify.trt import build_engine, compare_with_ort

    (tmp_path / "m.onnx").write_bytes(b"x")  # build_engine checks its paths first (a typo: exit 2)
    for call in (lambda: build_engine(tmp_path / "m.onnx"), lambda: compare_with_ort("m.onnx")):
        with pytest.raises(BackendUnavailable) as err:
            call()
        assert str(err.value) == REASON and ("tensorrt" in REASON or "GPU" in REASON)
    assert BackendUnavailable.exit_code not in (0, 1)


def test_registrations_import_where_tensorrt_is():
    pytest.importorskip("tensorrt.plugin", reason="tensorrt not installed (needs pypi.nvidia.com)")
    from onnxvq.plugins.trt import PLUGIN_IDS, register_plugins

    assert register_plugins() == PLUGIN_IDS


def _plugin_model(path, ln, sm, batch):
    from onnx import helper, numpy_helper

    from onnxvq.core.graph import save_model
    from onnxvq.plugins.trt import NAMESPACE

    tag = {"domain": "com.onnxvq", "plugin_version": "1", "plugin_namespace": NAMESPACE}
    nodes = [
        helper.make_node("IntLayerNorm", ["x", "alpha", "gamma", "beta"], ["y_ln"],
                         **tag, **ln.attributes()),
        helper.make_node("LogIntSoftmax", ["s"], ["codes"], **tag, **sm.attributes()),
        helper.make_node("LogIntMatMul", ["codes", "v"], ["y_mm"], **tag, bits=sm.bits,
                         zero_point=0, octave_steps=sm.octave_steps),
    ]
    init = [numpy_helper.from_array(a, n) for a, n in
            ((ln.alpha, "alpha"), (ln.gamma, "gamma"), (ln.beta, "beta"))]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes, "plugins",
        [vi("x", TensorProto.UINT8, [batch, 9, 64]), vi("s", TensorProto.INT8, [batch, 2, 13, 13]),
         vi("v", TensorProto.INT8, [batch, 2, 13, 8])],
        [vi("y_ln", TensorProto.UINT8, [batch, 9, 64]),
         vi("codes", TensorProto.UINT8, [batch, 2, 13, 13]),
         vi("y_mm", TensorProto.INT64, [batch, 2, 13, 8])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.onnxvq", 1)])
    return save_model(model, path)


@pytest.mark.skipif(REASON is not None, reason=str(REASON))
@pytest.mark.parametrize("batch,steps", [(1, 1), (64, 1), (64, 2)])
def test_engine_with_plugins_equals_reference(tmp_path, batch, steps):
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from onnxvq.verify.trt import build_engine

    rng = np.random.default_rng(batch)
    ln, sm = _ln_params(rng, 64), ref.softmax_constants(0.08, 4, octave_steps=steps)
    report = build_engine(_plugin_model(tmp_path / "p.onnx", ln, sm, batch), tmp_path / "p.engine")
    assert len(report.plugins) == 3
    feeds = {"x": rng.integers(0, 256, (batch, 9, 64)).astype(np.uint8),
             "s": rng.integers(-128, 128, (batch, 2, 13, 13)).astype(np.int8),
             "v": rng.integers(-128, 128, (batch, 2, 13, 8)).astype(np.int8)}
    with TrtRunner(EngineFromBytes(report.engine_path.read_bytes())) as runner:
        out = runner.infer(feeds)
    codes = ref.log_int_softmax(feeds["s"], **sm.attributes())
    np.testing.assert_array_equal(out["codes"], codes)
    np.testing.assert_array_equal(out["y_mm"], ref.log_int_matmul(codes, feeds["v"], bits=4,
                                                                  octave_steps=steps))
    np.testing.assert_array_equal(
        out["y_ln"], ref.int_layer_norm(feeds["x"], ln.alpha, ln.gamma, ln.beta, **ln.attributes()))
