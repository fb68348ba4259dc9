"""Reference of QuantizedLinear (plugins/README.md): the int8 Linear on uint8 activation codes.

The integer accumulation is exact (int64 here; every conforming backend's int32 sums equal it for
K <= 65536), then the float32 epilogue in the stated order, each step one IEEE rounding:
f32(acc), times f32(a_scale * b_scale[n]), plus bias[n]. This is what ONNX Runtime's
com.microsoft MatMulIntegerToFloat computes, bit for bit.
"""

from __future__ import annotations

import numpy as np

MAX_K = 65536  # 255 * 128 * K < 2^31: the int32 accumulation cannot overflow


def quantized_linear_acc(a: np.ndarray, b: np.ndarray, a_zero_point) -> np.ndarray:
    """acc[..., n] = sum_k (a[..., k] - a_zero_point) * b[k, n], exact (int64)."""
    a = np.asarray(a)
    if a.dtype != np.uint8 or np.asarray(b).dtype != np.int8:
        raise ValueError("QuantizedLinear takes uint8 activations and int8 weights")
    if b.ndim != 2 or a.shape[-1] != b.shape[0] or b.shape[0] > MAX_K:
        raise ValueError(f"shapes {a.shape} x {b.shape}: need [..., K] x [K, N], K <= {MAX_K}")
    return np.matmul(a.astype(np.int64) - int(np.asarray(a_zero_point)), b.astype(np.int64))


def quantized_linear(a: np.ndarray, b: np.ndarray, a_scale, b_scale, a_zero_point,
                     b_zero_point, bias: np.ndarray) -> np.ndarray:
    """QuantizedLinear(A, B, a_scale, b_scale, a_zero_point, b_zero_point, bias) -> float32 Y."""
    if np.any(np.asarray(b_zero_point) != 0):
        raise ValueError("QuantizedLinear takes symmetric weights (b_zero_point 0)")
    acc = quantized_linear_acc(a, b, a_zero_point).astype(np.float32)
    scale = (np.float32(np.asarray(a_scale, np.float32).reshape(())) *
             np.asarray(b_scale, np.float32)).astype(np.float32)
    return ((acc * scale).astype(np.float32) + np.asarray(bias, np.float32)).astype(np.float32)


def quantized_linear_quantize(a, b, a_scale, b_scale, a_zero_point, b_zero_point, bias,
                              y_scale, y_zero_point) -> np.ndarray:
    """QuantizedLinearQuantize: QuantizeLinear's uint8 codes of QuantizedLinear's output, exact
    (an IEEE float32 division by y_scale, rounded half to even, then the zero point, saturated);
    y_scale / y_zero_point scalars or one per output column."""
    v = quantized_linear(a, b, a_scale, b_scale, a_zero_point, b_zero_point, bias)
    q = np.rint((v / np.asarray(y_scale, np.float32)).astype(np.float32)).astype(np.int64)
    return np.clip(q + np.asarray(y_zero_point, np.int64), 0, 255).astype(np.uint8)


def quantized_linear_gelu_quantize(a, b, a_scale, b_scale, a_zero_point, b_zero_point, bias,
                                   y_scale, y_zero_point) -> np.ndarray:
    """QuantizedLinearGeluQuantize: GeluQuantizeLinear's codes of QuantizedLinear's output (the
    erf GELU in float64 as in reference.fused, so a backend may differ by one code within the
    bound stated there)."""
    from onnxvq.plugins.reference.fused import gelu_quantize_linear

    v = quantized_linear(a, b, a_scale, b_scale, a_zero_point, b_zero_point, bias)
    zp = np.asarray(y_zero_point, np.uint8)
    return gelu_quantize_linear(v, np.zeros(v.shape[-1], np.float32), float(y_scale), zp)
