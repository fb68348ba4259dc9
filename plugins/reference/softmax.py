"""LogIntSoftmax and LogIntMatMul: integer references and constants (spec: plugins/README.md).

    scores X (int, scale S) --I-BERT i-exp--> e (int64) --row sum, normalize to 31 bits-->
      k = log2(sum/e) rounded at sqrt(2)*2^k --> codes (uint8; value 2^-k, Z means 0)
    codes A, V --sum_k (V - zp) << (M - A)--> int64 (scale s_v * 2^-M)

With `octave_steps=2` (RepQ-ViT's log-sqrt(2) codes) a code k stands for 2^(-k/2): the sum is
normalized to 15 bits so that fourth powers fit int64, k = 2 log2(sum/e) rounded at the geometric
midpoints 2^(k/2 + 1/4), and A.V weighs odd codes with the dyadic sqrt(2) = 181/128.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from onnxvq.core.errors import OnnxvqError
from onnxvq.plugins.reference.intmath import as_int64, bit_length

MAX_ROW = 1 << 16  # n is chosen so that a row of this many maximal exps fits int64
SUM_BITS = 31  # the row sum is normalized below 2^31 so that squares fit int64
SUM_BITS_SQRT2 = 15  # octave_steps=2: below 2^15, so that fourth powers fit int64
OCTAVE_STEPS = (1, 2)  # codes per octave: 1 = log2 (FQ-ViT), 2 = log-sqrt(2) (RepQ-ViT)
SQRT2_NUM, SQRT2_SHIFT = 181, 7  # round(sqrt(2) * 2^7) / 2^7: the odd codes' dyadic factor
MAX_MATMUL_K = 1 << 24
POLY_A, POLY_B, POLY_C = 0.3585, 1.353, 0.344  # I-BERT: exp(x) ~ A (x + B)^2 + C on (-ln2, 0]


@dataclass(frozen=True)
class SoftmaxConstants:
    """The int attributes of a LogIntSoftmax node."""

    x0: int
    b: int
    c: int
    n: int
    bits: int = 4
    octave_steps: int = 1  # 2: log-sqrt(2) codes (README "Base sqrt(2)")

    def attributes(self) -> dict[str, int]:
        return asdict(self)


def max_code(bits: int) -> int:
    """M: the largest code with a non-zero value 2^-M."""
    return min((1 << bits) - 1, 31)


def zero_code(bits: int) -> int:
    """Z: the code LogIntSoftmax emits for probabilities below 2^-(M + 1/2)."""
    return min(1 << bits, 255)


def sum_bits(octave_steps: int) -> int:
    """The row sum is normalized below 2^sum_bits: 31 for log2 codes, 15 for log-sqrt(2)."""
    return SUM_BITS if octave_steps == 1 else SUM_BITS_SQRT2


def acc_shift(bits: int, octave_steps: int = 1) -> int:
    """LogIntMatMul's accumulator has the scale s_v * 2^-acc_shift."""
    m = max_code(bits)
    return m if octave_steps == 1 else SQRT2_SHIFT + (m + 1) // 2


def code_weights(bits: int, octave_steps: int = 1) -> np.ndarray:
    """w(a) for every uint8 code a (int64 [256]): 2^(M - a) for log2 codes; for log-sqrt(2)
    (181 if a is odd else 128) << (ceil(M/2) - ceil(a/2)); 0 for codes above M."""
    _check_bits(bits)
    _check_steps(octave_steps)
    m, a = max_code(bits), np.arange(256, dtype=np.int64)
    if octave_steps == 1:
        w = np.int64(1) << np.clip(m - a, 0, 63)
    else:
        mult = np.where(a % 2 == 1, SQRT2_NUM, 1 << SQRT2_SHIFT).astype(np.int64)
        w = mult << np.clip((m + 1) // 2 - (a + 1) // 2, 0, 63)
    return np.where(a <= m, w, 0)


def softmax_constants(scale: float, bits: int = 4, octave_steps: int = 1) -> SoftmaxConstants:
    """LogIntSoftmax constants for scores of scale `scale` (derived once, in float64)."""
    _check_bits(bits)
    _check_steps(octave_steps)
    if not 0.0 < scale < math.log(2.0):
        raise OnnxvqError(f"LogIntSoftmax needs a score scale in (0, ln 2), got {scale}")
    x0 = math.floor(-math.log(2.0) / scale)
    b = math.floor(POLY_B / scale)
    c = math.floor(POLY_C / (POLY_A * scale * scale))
    pmax = max(b * b, (x0 + 1 + b) ** 2) + c
    n = min(62, 63 - (MAX_ROW.bit_length() - 1) - pmax.bit_length())
    if n < 0:
        raise OnnxvqError(f"score scale {scale} is too small: exp values overflow int64")
    return SoftmaxConstants(x0=x0, b=b, c=c, n=n, bits=bits, octave_steps=octave_steps)


def int_exp(x: np.ndarray, *, x0: int, b: int, c: int, n: int) -> np.ndarray:
    """I-BERT integer exp of each row, relative to the row max (README steps 1-4), int64 >= 0."""
    x = as_int64(x)
    d = x - x.max(axis=-1, keepdims=True)
    q = (-d) // (-x0)
    r = d - q * x0
    p = (r + b) ** 2 + c
    return (p << n) >> np.minimum(q, 63)


def log_int_softmax(
    x: np.ndarray, *, x0: int, b: int, c: int, n: int, bits: int = 4, octave_steps: int = 1
) -> np.ndarray:
    """Log codes of softmax over the last axis (uint8): k means 2^(-k/octave_steps),
    zero_code(bits) means 0."""
    _check_softmax(x, x0, b, c, n, bits)
    _check_steps(octave_steps)
    e = int_exp(x, x0=x0, b=b, c=c, n=n)
    s = e.sum(axis=-1, keepdims=True)
    h = np.maximum(bit_length(s) - sum_bits(octave_steps), 0)
    big, small = s >> h, e >> h
    big_p, small_p = big * big, small * small
    if octave_steps == 2:  # fourth powers: S' < 2^15, so both stay below 2^60
        big_p, small_p = big_p * big_p, small_p * small_p
    k = _rounded_log2_ratio(big_p, small_p, max_code(bits) + 1)
    code = np.where((small == 0) | (k > max_code(bits)), zero_code(bits), k)
    return code.astype(np.uint8)


def _rounded_log2_ratio(big_sq: np.ndarray, small_sq: np.ndarray, cap: int) -> np.ndarray:
    """#{t in 1..cap : big^p >> (2t-1) >= small^p}: p log2(big/small) / 2 rounded to an integer
    (p = 2: log2 codes, p = 4: log-sqrt(2) codes), at the geometric midpoints.

    The threshold test is monotone in t, so a binary search over t (steps 32..1) counts it.
    """
    k = np.zeros(np.broadcast_shapes(big_sq.shape, small_sq.shape), np.int64)
    for step in (32, 16, 8, 4, 2, 1):
        t = k + step
        shift = np.minimum(2 * t - 1, 63)
        ok = (t <= cap) & ((big_sq >> shift) >= small_sq)
        k = np.where(ok, t, k)
    return k


def log_int_matmul(
    a: np.ndarray, v: np.ndarray, *, bits: int = 4, zero_point: int = 0, octave_steps: int = 1
) -> np.ndarray:
    """int64 sum_k w(A[..., r, k]) * (V[..., k, d] - zero_point), w = code_weights(bits, steps):
    2^(M - A) for log2 codes; codes above M give 0."""
    _check_bits(bits)
    _check_steps(octave_steps)
    if a.dtype != np.uint8 or v.dtype not in (np.int8, np.uint8):
        raise OnnxvqError(f"LogIntMatMul takes uint8 A and int8/uint8 V, got {a.dtype}, {v.dtype}")
    if a.ndim < 2 or a.ndim != v.ndim or a.shape[:-2] != v.shape[:-2]:
        raise OnnxvqError(f"LogIntMatMul shapes {a.shape} and {v.shape} do not match")
    if a.shape[-1] != v.shape[-2] or a.shape[-1] > MAX_MATMUL_K:
        raise OnnxvqError(f"LogIntMatMul inner sizes {a.shape[-1]} and {v.shape[-2]} are invalid")
    w = code_weights(bits, octave_steps)[a]
    return np.matmul(w, as_int64(v) - zero_point)


def decode_log2_codes(codes: np.ndarray, bits: int = 4, octave_steps: int = 1) -> np.ndarray:
    """Float value of LogIntSoftmax codes: 2^(-k/octave_steps) for k <= M, 0 otherwise."""
    k = as_int64(codes)
    return np.where(k <= max_code(bits), np.exp2(-k.astype(np.float64) / octave_steps), 0.0)


def decode_log_int_matmul(y: np.ndarray, v_scale: float, bits: int = 4,
                          octave_steps: int = 1) -> np.ndarray:
    """Float value of a LogIntMatMul accumulator: y * s_v * 2^-acc_shift(bits, octave_steps)."""
    return y.astype(np.float64) * v_scale * 2.0 ** -acc_shift(bits, octave_steps)


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise OnnxvqError(f"bits must lie in 1..8, got {bits}")


def _check_steps(octave_steps: int) -> None:
    if octave_steps not in OCTAVE_STEPS:
        raise OnnxvqError(f"octave_steps must be 1 (log2) or 2 (log-sqrt(2)), got {octave_steps}")


def _check_softmax(x: np.ndarray, x0: int, b: int, c: int, n: int, bits: int) -> None:
    _check_bits(bits)
    if x.dtype not in (np.int8, np.int32):
        raise OnnxvqError(f"LogIntSoftmax input must be int8 or int32, got {x.dtype}")
    if x.ndim == 0 or not 1 <= x.shape[-1] <= MAX_ROW:
        raise OnnxvqError(f"LogIntSoftmax rows must have 1..{MAX_ROW} elements")
    pmax = max(b * b, (x0 + 1 + b) ** 2) + c
    if x0 >= 0 or b < 0 or c < 0 or not 0 <= n <= 62 or pmax << n >= (1 << 63) // MAX_ROW:
        raise OnnxvqError(f"LogIntSoftmax constants out of range: x0={x0} b={b} c={c} n={n}")
