"""References of the fused float-to-code ops (GeluQuantizeLinear, AddLayerNormQuantize): a float
kernel followed by the QuantizeLinear that reads it, computed once. Unlike the integer ops these
are not bit-exact definitions: the reference evaluates the float part in float64 (exact erf,
float64 mean and variance), a backend computes it in float32 within the bound stated in
plugins/README.md, so its codes may differ by one where the value lies within that bound of a
rounding midpoint."""

from __future__ import annotations

import math

import numpy as np

_ERF = np.frompyfunc(math.erf, 1, 1)


def quantize(y: np.ndarray, scale: float, zero_point: np.ndarray | int) -> np.ndarray:
    """QuantizeLinear: saturate(rne(y / scale) + zp) in the zero point's dtype (uint8 or int8)."""
    zp = np.asarray(zero_point)
    info = np.iinfo(zp.dtype)
    q = np.rint(np.asarray(y, np.float64) / float(scale)) + int(zp)
    return np.clip(q, info.min, info.max).astype(zp.dtype)


def gelu(x: np.ndarray) -> np.ndarray:
    """The erf GELU x * (1 + erf(x / sqrt 2)) / 2 in float64."""
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1.0 + _ERF(x / math.sqrt(2.0)).astype(np.float64))


def gelu_quantize_linear(x: np.ndarray, bias: np.ndarray, scale: float,
                         zero_point: np.ndarray | int) -> np.ndarray:
    """GeluQuantizeLinear(X, bias, y_scale, y_zero_point): the codes of gelu(X + bias); the sum is
    rounded to float32 first, as the kernels and the unfused graph compute it."""
    s = (np.asarray(x, np.float32) + np.asarray(bias, np.float32)).astype(np.float32)
    return quantize(gelu(s), scale, zero_point)


def add_layer_norm_quantize(a: np.ndarray, b: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                            scale: float, zero_point: np.ndarray | int, epsilon: float = 1e-5,
                            ) -> tuple[np.ndarray, np.ndarray]:
    """AddLayerNormQuantize(A, B, gamma, beta, y_scale, y_zero_point) -> (Y, S): S = A + B in
    float32 (B broadcast over A's leading dimensions), Y the codes of LayerNorm(S) over the last
    axis, computed in float64."""
    s = (np.asarray(a, np.float32) + np.asarray(b, np.float32)).astype(np.float32)
    d = s.astype(np.float64)
    mean = d.mean(-1, keepdims=True)
    var = ((d - mean) ** 2).mean(-1, keepdims=True)
    y = (d - mean) / np.sqrt(var + np.float64(np.float32(epsilon)))
    y = y * np.asarray(gamma, np.float64) + np.asarray(beta, np.float64)
    return quantize(y, scale, zero_point), s


def add_mul_quantize_linear(a: np.ndarray, b: np.ndarray, m: np.ndarray, scale: float,
                            zero_point: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """AddMulQuantizeLinear(A, B, M, y_scale, y_zero_point) -> (Y, S): S = A + B, Y the codes of
    S * M (M over the last axis). Every step in float32 as Add, Mul and QuantizeLinear compute
    it (IEEE division): the one fused op here with a bit-exact definition."""
    s = (np.asarray(a, np.float32) + np.asarray(b, np.float32)).astype(np.float32)
    t = (s * np.asarray(m, np.float32)).astype(np.float32) / np.float32(scale)
    zp = np.asarray(zero_point)
    info = np.iinfo(zp.dtype)
    q = np.rint(t.astype(np.float32)) + np.float32(int(zp))
    return np.clip(q, info.min, info.max).astype(zp.dtype), s


def add_int_layer_norm(a: np.ndarray, b: np.ndarray, m: np.ndarray, x_scale: float,
                       x_zero_point: np.ndarray | int, alpha: np.ndarray, gamma: np.ndarray,
                       beta: np.ndarray, *, zero_point: int, epsilon: int, gamma_shift: int,
                       output_dtype: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """AddIntLayerNorm(A, B, M, x_scale, x_zero_point, alpha, gamma, beta) -> (Y, S): the PTS
    codes of S = A + B as AddMulQuantizeLinear makes them, then IntLayerNorm of those codes.
    Exact (both halves are); `zero_point` must equal `x_zero_point`."""
    from onnxvq.core.errors import OnnxvqError
    from onnxvq.plugins.reference.layernorm import int_layer_norm

    if int(np.asarray(x_zero_point)) != int(zero_point):
        raise OnnxvqError("AddIntLayerNorm zero_point must equal x_zero_point")
    codes, s = add_mul_quantize_linear(a, b, m, x_scale, x_zero_point)
    y = int_layer_norm(codes, alpha, gamma, beta, zero_point=zero_point, epsilon=epsilon,
                       gamma_shift=gamma_shift, output_dtype=output_dtype)
    return y, s
