"""The integer references against float math, exact big-integer re-statements of the spec, and
their documented bounds (plugins/README.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto

from onnxvq.core.errors import OnnxvqError
from onnxvq.plugins.reference import (
    acc_shift,
    bit_length,
    code_weights,
    decode_log2_codes,
    decode_log_int_matmul,
    dequantize_output,
    int_layer_norm,
    isqrt,
    layernorm_params,
    log_int_matmul,
    log_int_softmax,
    max_code,
    rnd_shift,
    softmax_constants,
    zero_code,
)

SQRT2 = math.sqrt(2.0)


# ----------------------------------------------------------------------------- integer helpers
def test_isqrt_is_exact_floor_sqrt_on_random_and_edge_values():
    rng = np.random.default_rng(0)
    m = np.array([1, 2, 3, 1000, 46340, 2**31 - 1, 3037000499 // 2], np.int64)
    squares = (m * m)[:, None] + np.array([-1, 0, 1])
    v = np.concatenate([
        rng.integers(0, 2**62, 20000), np.arange(0, 5000), squares.ravel(),
        [2**62 - 1, 2**61, 2**61 - 1, 2**60 + 12345],
    ])
    got = isqrt(v)
    want = np.array([math.isqrt(int(a)) for a in v], np.int64)
    np.testing.assert_array_equal(got, want)


def test_isqrt_rejects_out_of_domain():
    with pytest.raises(ValueError):
        isqrt(np.array([-1]))
    with pytest.raises(ValueError):
        isqrt(np.array([2**62]))


def test_bit_length_and_rounding_shift_match_python_integers():
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.integers(0, 2**63 - 1, 2000), [0, 1, 2, 3, 2**62, 2**63 - 1]])
    assert [int(b) for b in bit_length(v)] == [int(a).bit_length() for a in v]
    a = np.concatenate([rng.integers(-(2**55), 2**55, 2000), [-3, -2, -1, 0, 1, 2, 3, 5, -5]])
    for s in (1, 4, 32):
        want = [(1 if x >= 0 else -1) * ((abs(int(x)) + 2 ** (s - 1)) >> s) for x in a]
        assert [int(y) for y in rnd_shift(a, s)] == want
    np.testing.assert_array_equal(rnd_shift(np.array([-3, -1, 1, 3]), 1), [-2, -1, 1, 2])


# ----------------------------------------------------------------------------- IntLayerNorm
def _float_layer_norm(q, alpha, zp, s1, gamma, beta, eps):
    x = (q.astype(np.float64) - zp) * 2.0 ** alpha * s1
    mu = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


def _ln_case(rng, rows, c, out_dtype, eps=1e-6, s1=0.01, zp=117):
    q = rng.integers(0, 256, (rows, c)).astype(np.uint8)
    alpha = rng.integers(0, 4, c)
    gamma = rng.normal(1.0, 0.4, c)
    beta = rng.normal(0.0, 0.5, c)
    y = _float_layer_norm(q, alpha, zp, s1, gamma, beta, eps)
    lo, hi = (0, 255) if out_dtype == TensorProto.UINT8 else (-128, 127)
    out_scale = (y.max() - y.min()) / 255
    out_zp = int(np.clip(round(lo - y.min() / out_scale), lo, hi))
    params = layernorm_params(
        gamma, beta, s1, alpha, zp, out_scale, out_zp, eps=eps, output_dtype=out_dtype
    )
    return q, y, out_scale, out_zp, params


@pytest.mark.parametrize("c", [16, 64, 192, 768])
@pytest.mark.parametrize("out_dtype", [TensorProto.UINT8, TensorProto.INT8])
def test_int_layer_norm_within_one_step_of_float(c, out_dtype):
    rng = np.random.default_rng(c + out_dtype)
    q, y, out_scale, out_zp, p = _ln_case(rng, 200, c, out_dtype)
    got = int_layer_norm(q, p.alpha, p.gamma, p.beta, **p.attributes())
    assert got.dtype == (np.uint8 if out_dtype == TensorProto.UINT8 else np.int8)
    lo, hi = np.iinfo(got.dtype).min, np.iinfo(got.dtype).max
    want = np.clip(np.sign(y / out_scale) * np.floor(np.abs(y / out_scale) + 0.5) + out_zp, lo, hi)
    diff = np.abs(got.astype(np.int64) - want)
    assert diff.max() <= 1
    assert np.mean(diff == 0) > 0.99  # the one-step misses are rounding ties of float noise
    y_clipped = np.clip(y, (lo - out_zp) * out_scale, (hi - out_zp) * out_scale)
    err = np.abs(dequantize_output(got, out_scale, out_zp) - y_clipped)
    assert err.max() <= 1.5 * out_scale  # half a step of rounding plus at most one step off


@pytest.mark.parametrize("eps", [0.0, 1e-6, 1e-2])
def test_int_layer_norm_all_equal_rows_give_beta_exactly(eps):
    rng = np.random.default_rng(7)
    c, zp, out_scale, out_zp = 96, 120, 0.02, 128
    gamma, beta = rng.normal(1, 0.3, c), rng.normal(0, 1.0, c)
    expected = np.clip(np.sign(beta / out_scale) * np.floor(np.abs(beta / out_scale) + 0.5)
                       + out_zp, 0, 255)
    mixed = layernorm_params(gamma, beta, 0.01, rng.integers(0, 4, c), zp, out_scale, out_zp,
                             eps=eps)
    same = layernorm_params(gamma, beta, 0.01, np.full(c, 2), zp, out_scale, out_zp, eps=eps)
    rows_zp = np.full((3, c), zp, np.uint8)  # xt = 0 whatever alpha is
    rows_const = np.stack([np.full(c, v, np.uint8) for v in (0, 77, 255)])  # equal with equal alpha
    for p, q in ((mixed, rows_zp), (same, rows_const), (same, rows_zp)):
        got = int_layer_norm(q, p.alpha, p.gamma, p.beta, **p.attributes())
        np.testing.assert_array_equal(got, np.broadcast_to(expected, got.shape))


def _big_int_layer_norm_row(q, alpha, gamma, beta, zp, eps, g, lo, hi):
    """README steps 1-10 in unbounded Python integers (no int64 anywhere)."""
    def rnd(a, s):
        return (1 if a >= 0 else -1) * ((abs(a) + (1 << (s - 1))) >> s)
    c = len(q)
    xt = [(int(v) - zp) * (1 << int(a)) for v, a in zip(q, alpha, strict=True)]
    s1, s2 = sum(xt), sum(x * x for x in xt)
    sig = math.isqrt((c * s2 - s1 * s1) * 4096 + c * c * eps)
    r = (1 << 54) // max(sig, 1)
    out = []
    for x, gm, bt in zip(xt, gamma, beta, strict=True):
        z = rnd((c * x - s1) * r, 32)
        out.append(min(max(rnd(z * int(gm) + int(bt), 16 + g), lo), hi))
    return out


def test_int_layer_norm_widest_rows_do_not_overflow():
    """C = 8192 at the extremes of the input range (max variance, one outlier, tiny variance)."""
    c, zp = 8192, 128
    rng = np.random.default_rng(3)
    gamma, beta = rng.normal(1, 0.5, c), rng.normal(0, 2, c)
    p = layernorm_params(gamma, beta, 1e-3, np.full(c, 3), zp, 0.05, 128, eps=1e-5)
    rows = np.stack([
        np.tile([0, 255], c // 2), np.r_[255, np.zeros(c - 1)], np.r_[0, np.full(c - 1, 255)],
        np.tile([128, 129], c // 2), rng.integers(0, 256, c),
    ]).astype(np.uint8)
    got = int_layer_norm(rows, p.alpha, p.gamma, p.beta, **p.attributes())
    for row, out in zip(rows, got, strict=True):
        want = _big_int_layer_norm_row(row, p.alpha, p.gamma, p.beta, zp, p.epsilon,
                                       p.gamma_shift, 0, 255)
        assert out.tolist() == want


def test_layernorm_params_folds_into_documented_ranges_and_refuses_tiny_scales():
    rng = np.random.default_rng(5)
    c = 32
    p = layernorm_params(rng.normal(0, 3, c), rng.normal(0, 1e6, c), 0.02, np.zeros(c), 0,
                         1e-3, 0)
    assert p.gamma.dtype == np.int32 and np.abs(p.gamma).max() <= 2**30
    assert p.beta.dtype == np.int64 and np.abs(p.beta).max() <= 2**55
    assert 0 <= p.gamma_shift <= 24
    q = rng.integers(0, 256, (4, c)).astype(np.uint8)
    y = int_layer_norm(q, p.alpha, p.gamma, p.beta, **p.attributes())
    np.testing.assert_array_equal(y, np.broadcast_to(np.where(p.beta > 0, 255, 0), y.shape))
    with pytest.raises(OnnxvqError):
        layernorm_params(np.full(c, 10.0), np.zeros(c), 0.01, np.zeros(c), 0, 1e-9, 0)
    with pytest.raises(OnnxvqError):
        int_layer_norm(q, np.full(c, 4), p.gamma, p.beta, **p.attributes())


# ----------------------------------------------------------------------------- LogIntSoftmax
def _big_terms(x, x0, b, c, n, width):
    """The README's exponentials in unbounded Python integers, (((r + b)^2 + c) << n) >> q per
    element, and their sum's shift h and shifted sum S for a sum of `width` bits."""
    top = max(int(v) for v in x)
    e = []
    for v in x:
        d = int(v) - top
        q = (-d) // (-x0)
        e.append(((((d - q * x0) + b) ** 2 + c) << n) >> min(q, 63))
    h = max(sum(e).bit_length() - width, 0)
    return e, h, sum(e) >> h


def _big_log_int_softmax_row(x, x0, b, c, n, bits):
    """README steps 1-7 in unbounded Python integers; the sqrt(2) test as 2 S^2 >= 4^t E^2."""
    m, zc = max_code(bits), zero_code(bits)
    e, h, big = _big_terms(x, x0, b, c, n, 31)
    codes = []
    for ej in e:
        small = ej >> h
        if small == 0:
            codes.append(zc)
            continue
        k = sum(1 for t in range(1, m + 2) if big * big * 2 >= (small * small) << (2 * t))
        codes.append(k if k <= m else zc)
    return codes


@pytest.mark.parametrize("scale", [0.003, 0.02, 0.1, 0.3])
def test_softmax_constants_bound_the_row_sum(scale):
    sc = softmax_constants(scale)
    pmax = max(sc.b**2, (sc.x0 + 1 + sc.b) ** 2) + sc.c
    assert sc.x0 < 0 and (pmax << sc.n) * 2**16 < 2**63 <= (pmax << (sc.n + 1)) * 2**16
    assert sc.x0 == math.floor(-math.log(2) / scale) and sc.b == math.floor(1.353 / scale)


def test_softmax_constants_refuse_bad_scales():
    for bad in (0.0, -0.1, 0.7, 1e-9):
        with pytest.raises(OnnxvqError):
            softmax_constants(bad)
    with pytest.raises(OnnxvqError):
        softmax_constants(0.1, bits=9)


@pytest.mark.parametrize("scale", [0.01, 0.05, 0.1])
def test_log_int_softmax_tracks_float_softmax(scale):
    rng = np.random.default_rng(int(scale * 1000))
    x = rng.integers(-128, 128, (256, 197)).astype(np.int8)
    sc = softmax_constants(scale)
    codes = log_int_softmax(x, **sc.attributes())
    assert codes.dtype == np.uint8 and codes.max() <= zero_code(4)
    xf = x.astype(np.float64)
    z = scale * (xf - xf.max(-1, keepdims=True))
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    k_float = np.minimum(np.floor(-np.log2(p) + 0.5), 16)
    assert np.abs(codes - k_float).max() <= 1
    assert np.mean(codes == k_float) > 0.95
    sums = decode_log2_codes(codes).sum(-1)
    assert sums.max() <= SQRT2 and sums.min() >= 0.6
    rows = np.arange(len(x))
    assert np.all(codes[rows, x.argmax(-1)] == codes.min(-1))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_log_int_softmax_equals_big_integer_statement_on_extreme_rows(bits):
    """N = 4096 rows at the int32 and int8 extremes: no int64 overflow, same codes as big ints."""
    rng = np.random.default_rng(bits)
    n = 4096
    sc = softmax_constants(0.004, bits)
    rows32 = np.stack([
        np.full(n, 7), np.r_[2**31 - 1, np.full(n - 1, -(2**31))], rng.integers(-400, 1, n),
        np.tile([0, -1, -2, -3000], n // 4), rng.integers(-(2**31), 2**31 - 1, n),
    ]).astype(np.int32)
    rows8 = np.stack([np.full(n, 127), np.tile([127, -128], n // 2), rng.integers(-128, 128, n)])
    for rows in (rows32, rows8.astype(np.int8)):
        got = log_int_softmax(rows, **sc.attributes())
        for row, out in zip(rows, got, strict=True):
            assert out.tolist() == _big_log_int_softmax_row(row, sc.x0, sc.b, sc.c, sc.n, bits)
    equal_row_code = 12 if 12 <= max_code(bits) else zero_code(bits)  # log2(4096) = 12 exactly
    assert np.all(got[0] == equal_row_code)
    assert decode_log2_codes(got, bits).sum(-1).max() <= SQRT2


def test_log_int_softmax_zero_code_and_bound_per_element():
    sc = softmax_constants(0.05)
    x = np.array([[0, -100, -200, -400, -1000]], np.int32)
    codes = log_int_softmax(x, **sc.attributes())
    assert codes[0, 0] == 0 and codes[0, -1] == zero_code(4) == 16
    assert decode_log2_codes(codes)[0, -1] == 0.0
    assert max_code(4) == 15 and max_code(8) == 31 and zero_code(8) == 255


# ----------------------------------------------------------------------------- LogIntMatMul
def _brute_log_int_matmul(a, v, bits, zp):
    m = max_code(bits)
    rows, inner = a.shape[-2], a.shape[-1]
    out = np.zeros(a.shape[:-1] + v.shape[-1:], dtype=object)
    for idx in np.ndindex(a.shape[:-2]):
        for r in range(rows):
            for k in range(inner):
                code = int(a[idx + (r, k)])
                if code <= m:
                    out[idx + (r,)] += (v[idx + (k,)].astype(object) - zp) * (1 << (m - code))
    return out


@pytest.mark.parametrize("bits,vdtype,zp", [(4, np.int8, 0), (4, np.uint8, 128), (8, np.int8, -3)])
def test_log_int_matmul_equals_brute_force(bits, vdtype, zp):
    rng = np.random.default_rng(bits)
    a = rng.integers(0, 256 if bits == 8 else 18, (2, 3, 5, 40)).astype(np.uint8)
    info = np.iinfo(vdtype)
    v = rng.integers(info.min, info.max + 1, (2, 3, 40, 6)).astype(vdtype)
    got = log_int_matmul(a, v, bits=bits, zero_point=zp)
    assert got.dtype == np.int64
    assert got.tolist() == _brute_log_int_matmul(a, v, bits, zp).tolist()


def test_log_int_matmul_worst_case_long_rows():
    """All codes 0 (weight 2^M) against V = -128 over K = 4096: the documented maximum magnitude."""
    for bits in (4, 8):
        a = np.zeros((1, 4096), np.uint8)
        v = np.full((4096, 2), -128, np.int8)
        got = log_int_matmul(a, v, bits=bits, zero_point=127)
        assert got.tolist() == [[-255 * 4096 * 2 ** max_code(bits)] * 2]


# ----------------------------------------------------------------- log-sqrt(2) (octave_steps=2)
def _big_log_sqrt2_row(x, x0, b, c, n, bits):
    """README "Base sqrt(2)" in unbounded Python integers: S' < 2^15, and the quarter-octave
    threshold S'/E >= 2^((2t-1)/4) stated as 2 S'^4 >= 2^(2t) E^4."""
    m, zc = max_code(bits), zero_code(bits)
    e, h, big = _big_terms(x, x0, b, c, n, 15)
    codes = []
    for ej in e:
        small = ej >> h
        k = sum(1 for t in range(1, m + 2) if 2 * big**4 >= small**4 << (2 * t))
        codes.append(zc if small == 0 or k > m else k)
    return codes


@pytest.mark.parametrize("bits", [1, 4, 8])
def test_log_sqrt2_softmax_equals_big_integer_statement(bits):
    rng = np.random.default_rng(40 + bits)
    n = 4096
    sc = softmax_constants(0.004, bits, octave_steps=2)
    rows32 = np.stack([
        np.full(n, 7), np.r_[2**31 - 1, np.full(n - 1, -(2**31))], rng.integers(-400, 1, n),
        np.tile([0, -1, -2, -3000], n // 4), rng.integers(-(2**31), 2**31 - 1, n),
    ]).astype(np.int32)
    rows8 = np.stack([np.full(n, 127), np.tile([127, -128], n // 2), rng.integers(-128, 128, n),
                      np.r_[127, np.full(n - 1, -128)]])
    for rows in (rows32, rows8.astype(np.int8)):
        got = log_int_softmax(rows, **sc.attributes())
        for row, out in zip(rows, got, strict=True):
            assert out.tolist() == _big_log_sqrt2_row(row, sc.x0, sc.b, sc.c, sc.n, bits)
        # all-equal rows of 4096: 2 log2(4096) = 24 exactly; the maximum gets the smallest code
        assert np.all(got[0] == (24 if 24 <= max_code(bits) else zero_code(bits)))
        assert got[1, 0] == got[1].min()
    one_hot = log_int_softmax(rows32[1:2], **sc.attributes())[0]
    assert one_hot[0] == 0 and np.all(one_hot[1:] == zero_code(bits))
    assert decode_log2_codes(got, bits, 2).sum(-1).max() <= 2**0.25


@pytest.mark.parametrize("scale", [0.02, 0.08])
def test_log_sqrt2_softmax_tracks_float_softmax(scale):
    rng = np.random.default_rng(int(scale * 1000))
    x = rng.integers(-128, 128, (256, 197)).astype(np.int8)
    sc = softmax_constants(scale, 4, octave_steps=2)
    codes = log_int_softmax(x, **sc.attributes())
    xf = scale * (x.astype(np.float64) - x.max(-1, keepdims=True))
    p = np.exp(xf) / np.exp(xf).sum(-1, keepdims=True)
    k_float = np.floor(-2 * np.log2(p) + 0.5)
    k_float = np.where(k_float > 15, 16, k_float)
    assert np.abs(codes.astype(np.int64) - k_float).max() <= 1
    assert np.mean(codes == k_float) > 0.9
    # half-octave codes halve the base-2 codes' worst error on the probabilities they keep
    kept = codes < 16
    err2 = np.abs(np.log2(decode_log2_codes(log_int_softmax(x, **softmax_constants(scale, 4)
                                                            .attributes()))[kept] / p[kept]))
    err = np.abs(np.log2(decode_log2_codes(codes, 4, 2)[kept] / p[kept]))
    assert err.mean() < 0.6 * err2.mean()
    sums = decode_log2_codes(codes, 4, 2).sum(-1)
    assert sums.max() <= 2**0.25 and sums.min() >= 0.7


def test_code_weights_are_the_dyadic_sqrt2_ladder():
    w = code_weights(4, 2)
    assert w[:4].tolist() == [2**15, 181 << 7, 2**14, 181 << 6] and w[15] == 181
    assert np.all(w[16:] == 0) and acc_shift(4, 2) == 15 == acc_shift(4, 1)
    true = 2.0 ** (15 - np.arange(16) / 2)
    assert np.abs(w[:16] / true - 1).max() < 1.1e-4  # 181/128 = sqrt(2) (1 - 1.07e-4)
    for bits in range(1, 9):  # the largest weight: int16-sized up to 4 bits, < 2^24 always
        assert code_weights(bits, 2).max() == 2 ** acc_shift(bits, 2) <= 2**23
    assert code_weights(8, 1)[31] == 1 and code_weights(8, 2)[31] == 181
    with pytest.raises(OnnxvqError, match="octave_steps"):
        code_weights(4, 3)
    with pytest.raises(OnnxvqError, match="octave_steps"):
        softmax_constants(0.1, 4, octave_steps=0)


@pytest.mark.parametrize("bits,vdtype,zp", [(4, np.int8, 0), (4, np.uint8, 128), (8, np.int8, -3)])
def test_log_sqrt2_matmul_equals_brute_force(bits, vdtype, zp):
    rng = np.random.default_rng(bits + 50)
    a = rng.integers(0, 256 if bits == 8 else 18, (2, 3, 5, 40)).astype(np.uint8)
    info = np.iinfo(vdtype)
    v = rng.integers(info.min, info.max + 1, (2, 3, 40, 6)).astype(vdtype)
    got = log_int_matmul(a, v, bits=bits, zero_point=zp, octave_steps=2)
    m, top = max_code(bits), (max_code(bits) + 1) // 2
    want = np.zeros(got.shape, dtype=object)
    for idx in np.ndindex(a.shape[:-1]):
        for k, code in enumerate(a[idx].tolist()):
            if code <= m:
                mult = 181 if code % 2 else 128
                w = mult * 2 ** (top - (code + 1) // 2)
                want[idx] += (v[idx[:-1] + (k,)].astype(object) - zp) * w
    assert got.tolist() == want.tolist()
    # and the float value of the accumulator is the dequantized product
    vf = v.astype(np.float64) - zp
    ref = np.matmul(decode_log2_codes(a, bits, 2), vf)
    bound = 1.1e-4 * np.matmul(decode_log2_codes(a, bits, 2), np.abs(vf))  # 181/128 vs sqrt(2)
    assert np.all(np.abs(decode_log_int_matmul(got, 1.0, bits, 2) - ref) <= bound)


def test_log_sqrt2_matmul_worst_case_long_rows():
    for bits in (4, 8):
        a = np.zeros((1, 4096), np.uint8)
        v = np.full((4096, 2), -128, np.int8)
        got = log_int_matmul(a, v, bits=bits, zero_point=127, octave_steps=2)
        assert got.tolist() == [[-255 * 4096 * 2 ** acc_shift(bits, 2)] * 2]
