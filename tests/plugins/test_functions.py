"""The ONNX local functions run in plain ONNX Runtime (no native library) and equal the integer
references bit for bit, on random and adversarial inputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

from onnxvq.core.runtime import make_session
from onnxvq.plugins.functions import DOMAIN, function_protos
from onnxvq.plugins.ops import (
    add_functions,
    make_int_layer_norm_node,
    make_log_int_matmul_node,
    make_log_int_softmax_node,
)
from onnxvq.plugins.reference import (
    int_layer_norm,
    layernorm_params,
    log_int_matmul,
    log_int_softmax,
    softmax_constants,
    zero_code,
)


def _run(graph: gs.Graph, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    model = gs.export_onnx(graph)
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    # every com.onnxvq op's function rides along (fused attention and fused float ops' too)
    assert {"IntLayerNorm", "LogIntSoftmax", "LogIntMatMul", "QLinearAttention",
            "LogIntAttention"} <= {f.name for f in model.functions}
    assert all(n.attribute for n in model.graph.node if n.domain == DOMAIN)
    # custom_ops=False: never the native kernels, only the inlined functions
    return make_session(model, custom_ops=False).run(None, feeds)


def _ln_params(rng, c, out_dtype=TensorProto.UINT8, eps=1e-6, alpha=None):
    alpha = rng.integers(0, 4, c) if alpha is None else alpha
    out_zp = 128 if out_dtype == TensorProto.UINT8 else 0
    return layernorm_params(rng.normal(1, 0.4, c), rng.normal(0, 0.5, c), 0.01, alpha, 120,
                            0.03, out_zp, eps=eps, output_dtype=out_dtype)


def _ln_rows(rng, batch, tokens, c):
    q = rng.integers(0, 256, (batch, tokens, c)).astype(np.uint8)
    q[0, 0] = 120  # xt = 0: all-equal row
    if tokens > 2:
        q[0, 1] = np.tile([0, 255], c // 2)  # maximal variance
        q[0, 2] = rng.integers(119, 122, c)  # tiny variance
    return q


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("out_dtype", [TensorProto.UINT8, TensorProto.INT8])
def test_int_layer_norm_function_is_bit_exact(batch, out_dtype):
    rng = np.random.default_rng(batch + out_dtype)
    c = 48
    params = [_ln_params(rng, c, out_dtype), _ln_params(rng, c, out_dtype, eps=0.0,
                                                        alpha=np.full(c, 3))]
    g = gs.Graph(opset=17)
    x = gs.Variable("x", np.uint8, ["B", 10, c])
    g.inputs = [x]
    g.outputs = [make_int_layer_norm_node(g, x, p, name=f"ln{i}") for i, p in enumerate(params)]
    q = _ln_rows(rng, batch, 10, c)
    for p, got in zip(params, _run(g, {"x": q}), strict=True):
        want = int_layer_norm(q, p.alpha, p.gamma, p.beta, **p.attributes())
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_int_layer_norm_function_widest_rows():
    rng = np.random.default_rng(11)
    c = 8192
    p = _ln_params(rng, c, alpha=np.full(c, 3), eps=1e-5)
    g = gs.Graph(opset=17)
    x = gs.Variable("x", np.uint8, [3, c])
    g.inputs, g.outputs = [x], [make_int_layer_norm_node(g, x, p, name="ln")]
    q = np.stack([np.tile([0, 255], c // 2), np.r_[255, np.zeros(c - 1)],
                  rng.integers(0, 256, c)]).astype(np.uint8)
    (got,) = _run(g, {"x": q})
    np.testing.assert_array_equal(got, int_layer_norm(q, p.alpha, p.gamma, p.beta,
                                                      **p.attributes()))


def _softmax_rows(rng, dtype, shape):
    info = np.iinfo(dtype)
    lo, hi = (info.min, info.max) if dtype == np.int8 else (-(2**31), 2**31 - 1)
    x = rng.integers(lo, hi, shape, endpoint=True).astype(dtype)
    rows = x.reshape(-1, shape[-1])
    rows[0] = 5  # all equal
    rows[1] = lo
    rows[1, 0] = hi  # one huge score, everything else at the bottom
    rows[2] = np.where(np.arange(shape[-1]) % 2 == 0, hi, lo)
    return x


@pytest.mark.parametrize("dtype,scale", [(np.int8, 0.05), (np.int32, 0.004)])
@pytest.mark.parametrize("batch", [1, 64])
def test_log_int_softmax_function_is_bit_exact(dtype, scale, batch):
    rng = np.random.default_rng(batch)
    consts = [softmax_constants(scale, 4), softmax_constants(scale * 2, 8),
              softmax_constants(scale / 2, 2)]
    g = gs.Graph(opset=17)
    x = gs.Variable("x", dtype, ["B", 2, 17, 17])
    g.inputs = [x]
    g.outputs = [make_log_int_softmax_node(g, x, k, name=f"sm{i}") for i, k in enumerate(consts)]
    xv = _softmax_rows(rng, dtype, (batch, 2, 17, 17))
    for k, got in zip(consts, _run(g, {"x": xv}), strict=True):
        np.testing.assert_array_equal(got, log_int_softmax(xv, **k.attributes()))


def test_log_int_softmax_function_long_rows():
    rng = np.random.default_rng(4096)
    k = softmax_constants(0.003, 4)
    g = gs.Graph(opset=17)
    x = gs.Variable("x", np.int32, [4, 4096])
    g.inputs, g.outputs = [x], [make_log_int_softmax_node(g, x, k, name="sm")]
    xv = _softmax_rows(rng, np.int32, (4, 4096))
    (got,) = _run(g, {"x": xv})
    want = log_int_softmax(xv, **k.attributes())
    np.testing.assert_array_equal(got, want)
    assert (want == zero_code(4)).any() and (want == 0).any()


@pytest.mark.parametrize("bits,vdtype,zp", [(4, np.int8, 0), (4, np.uint8, 128), (8, np.int8, 5)])
@pytest.mark.parametrize("batch", [1, 64])
def test_log_int_matmul_function_is_bit_exact(bits, vdtype, zp, batch):
    rng = np.random.default_rng(bits * batch)
    g = gs.Graph(opset=17)
    a = gs.Variable("a", np.uint8, ["B", 2, 17, 17])
    v = gs.Variable("v", vdtype, ["B", 2, 17, 8])
    g.inputs = [a, v]
    g.outputs = [make_log_int_matmul_node(g, a, v, bits=bits, zero_point=zp, name="mm")]
    av = rng.integers(0, 256 if bits == 8 else 17, (batch, 2, 17, 17)).astype(np.uint8)
    av[0, 0] = 0  # heaviest weights
    info = np.iinfo(vdtype)
    vv = rng.integers(info.min, info.max, (batch, 2, 17, 8), endpoint=True).astype(vdtype)
    (got,) = _run(g, {"a": av, "v": vv})
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, log_int_matmul(av, vv, bits=bits, zero_point=zp))


def test_softmax_then_matmul_chain_long_rows():
    rng = np.random.default_rng(2)
    n, k = 4096, softmax_constants(0.02, 4)
    g = gs.Graph(opset=17)
    x = gs.Variable("x", np.int8, [1, 2, n])
    v = gs.Variable("v", np.int8, [1, n, 4])
    codes = make_log_int_softmax_node(g, x, k, name="sm")
    g.inputs, g.outputs = [x, v], [make_log_int_matmul_node(g, codes, v, name="mm"), codes]
    xv = rng.integers(-128, 128, (1, 2, n)).astype(np.int8)
    vv = np.full((1, n, 4), -128, np.int8)
    got, got_codes = _run(g, {"x": xv, "v": vv})
    want_codes = log_int_softmax(xv, **k.attributes())
    np.testing.assert_array_equal(got_codes, want_codes)
    np.testing.assert_array_equal(got, log_int_matmul(want_codes, vv))


def test_add_functions_on_a_plain_model():
    sm = softmax_constants(0.1)
    node = helper.make_node("LogIntSoftmax", ["x"], ["y"], domain=DOMAIN, **sm.attributes(),
                            plugin_version="1", plugin_namespace=DOMAIN)
    graph = helper.make_graph(
        [node], "t", [helper.make_tensor_value_info("x", TensorProto.INT8, [3, 9])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [3, 9])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    add_functions(add_functions(model))  # idempotent
    # one function per com.onnxvq op: the integer ops, the fused attentions, the fused float ops,
    # QuantizedLinear and its two code-writing forms, AddIntLayerNorm
    assert len(model.functions) == len(function_protos()) + 2 + 3 + 3 + 1 == 12
    onnx.checker.check_model(model, full_check=True)
    xv = np.random.default_rng(0).integers(-128, 128, (3, 9)).astype(np.int8)
    (got,) = make_session(model, custom_ops=False).run(None, {"x": xv})
    np.testing.assert_array_equal(got, log_int_softmax(xv, **sm.attributes()))


@pytest.mark.parametrize("opset", [17, 18, 20, 21])
def test_functions_are_stamped_with_the_model_opset(opset):
    """ORT refuses a local function importing another default opset than the model (dynamo
    exports are opset 18-20); ReduceMax's axes move from an attribute to an input at 18."""
    rng = np.random.default_rng(opset)
    c, n = 16, 12
    p = _ln_params(rng, c)
    k = softmax_constants(0.05)
    g = gs.Graph(opset=opset)
    x = gs.Variable("x", np.uint8, [2, 5, c])
    s = gs.Variable("s", np.int8, [2, 3, n])
    v = gs.Variable("v", np.int8, [2, n, 4])
    codes = make_log_int_softmax_node(g, s, k, name="sm")
    g.inputs = [x, s, v]
    g.outputs = [make_int_layer_norm_node(g, x, p, name="ln"), codes,
                 make_log_int_matmul_node(g, codes, v, name="mm")]
    model = gs.export_onnx(g)
    assert {o.version for f in model.functions for o in f.opset_import if o.domain == ""} == {
        opset}
    xq = _ln_rows(rng, 2, 5, c)
    sq = rng.integers(-128, 128, (2, 3, n)).astype(np.int8)
    vq = rng.integers(-128, 128, (2, n, 4)).astype(np.int8)
    got_ln, got_codes, got_mm = _run(g, {"x": xq, "s": sq, "v": vq})
    np.testing.assert_array_equal(got_ln, int_layer_norm(xq, p.alpha, p.gamma, p.beta,
                                                         **p.attributes()))
    want = log_int_softmax(sq, **k.attributes())
    np.testing.assert_array_equal(got_codes, want)
    np.testing.assert_array_equal(got_mm, log_int_matmul(want, vq))


def test_functions_refuse_opsets_they_are_not_written_for():
    with pytest.raises(ValueError, match="opsets 17-21"):
        function_protos(22)


# ----------------------------------------------------------------- log-sqrt(2) (octave_steps=2)
@pytest.mark.parametrize("dtype,scale", [(np.int8, 0.05), (np.int32, 0.004), (np.int32, 2e-7)])
def test_log_sqrt2_softmax_function_is_bit_exact(dtype, scale):
    rng = np.random.default_rng(77)
    consts = [softmax_constants(scale, bits, octave_steps=2) for bits in (4, 8, 1)]
    consts.append(softmax_constants(scale, 4))  # base 2 next to it: one function serves both
    g = gs.Graph(opset=17)
    x = gs.Variable("x", dtype, ["B", 2, 17, 17])
    g.inputs = [x]
    g.outputs = [make_log_int_softmax_node(g, x, k, name=f"sm{i}") for i, k in enumerate(consts)]
    xv = _softmax_rows(rng, dtype, (8, 2, 17, 17))
    got = _run(g, {"x": xv})
    for k, out in zip(consts, got, strict=True):
        np.testing.assert_array_equal(out, log_int_softmax(xv, **k.attributes()))
    assert not np.array_equal(got[0], got[3])  # the two bases really differ
    assert got[0].reshape(-1, 17)[1, 0] == 0  # the one-hot row's maximum


@pytest.mark.parametrize("bits,vdtype,zp", [(4, np.int8, 0), (4, np.uint8, 128), (8, np.int8, 5),
                                            (3, np.uint8, 255)])
def test_log_sqrt2_matmul_function_is_bit_exact(bits, vdtype, zp):
    rng = np.random.default_rng(bits + zp)
    g = gs.Graph(opset=17)
    a = gs.Variable("a", np.uint8, ["B", 2, 17, 19])
    v = gs.Variable("v", vdtype, ["B", 2, 19, 8])
    g.inputs = [a, v]
    g.outputs = [make_log_int_matmul_node(g, a, v, bits=bits, zero_point=zp, octave_steps=2,
                                          name="mm")]
    av = rng.integers(0, 256 if bits == 8 else 17, (4, 2, 17, 19)).astype(np.uint8)
    av[0, 0] = 0  # heaviest weights
    av[0, 1] = 1  # heaviest odd weights
    info = np.iinfo(vdtype)
    vv = rng.integers(info.min, info.max, (4, 2, 19, 8), endpoint=True).astype(vdtype)
    (got,) = _run(g, {"a": av, "v": vv})
    np.testing.assert_array_equal(got, log_int_matmul(av, vv, bits=bits, zero_point=zp,
                                                      octave_steps=2))


def test_log_sqrt2_chain_long_rows():
    rng = np.random.default_rng(3)
    n, k = 4096, softmax_constants(0.02, 4, octave_steps=2)
    g = gs.Graph(opset=17)
    x = gs.Variable("x", np.int8, [1, 2, n])
    v = gs.Variable("v", np.int8, [1, n, 4])
    codes = make_log_int_softmax_node(g, x, k, name="sm")
    g.inputs = [x, v]
    g.outputs = [make_log_int_matmul_node(g, codes, v, octave_steps=2, name="mm"), codes]
    xv = rng.integers(-128, 128, (1, 2, n)).astype(np.int8)
    vv = np.full((1, n, 4), -128, np.int8)
    got, got_codes = _run(g, {"x": xv, "v": vv})
    want_codes = log_int_softmax(xv, **k.attributes())
    np.testing.assert_array_equal(got_codes, want_codes)
    np.testing.assert_array_equal(got, log_int_matmul(want_codes, vv, octave_steps=2))
