"""IntLayerNorm: the integer reference and its parameter derivation (spec: plugins/README.md).

    X (uint8/int8 PTS codes) --(q - zp) * 2^alpha--> xt --int64 mean/var, isqrt--> z (16 frac bits)
      --z * gamma + beta, rnd--> Y (uint8/int8 codes of s_out, zp_out)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnx import TensorProto

from onnxvq.core.errors import OnnxvqError
from onnxvq.plugins.reference.intmath import as_int64, isqrt, rnd_shift, round_half_away

MAX_CHANNELS = 8192
EPS_FRAC_BITS = 12  # eps is carried in 2^-12 units of s1^2
EPS_MAX = 1 << 34
RECIP_BITS = 54  # R = 2^54 // sig
Z_FRAC_BITS = 16  # the normalized value z keeps 16 fractional bits
GAMMA_SHIFT_MAX = 24
GAMMA_LIMIT = 1 << 30
OUTPUT_RANGES = {TensorProto.UINT8: (0, 255), TensorProto.INT8: (-128, 127)}
_OUTPUT_NUMPY = {TensorProto.UINT8: np.uint8, TensorProto.INT8: np.int8}


@dataclass(frozen=True)
class LayerNormParams:
    """Everything an IntLayerNorm node needs: three constant inputs and four int attributes."""

    alpha: np.ndarray = field(repr=False)  # uint8 [C]
    gamma: np.ndarray = field(repr=False)  # int32 [C]
    beta: np.ndarray = field(repr=False)  # int64 [C]
    zero_point: int
    epsilon: int
    gamma_shift: int
    output_dtype: int = TensorProto.UINT8

    def attributes(self) -> dict[str, int]:
        return {
            "zero_point": self.zero_point,
            "epsilon": self.epsilon,
            "gamma_shift": self.gamma_shift,
            "output_dtype": self.output_dtype,
        }


def int_layer_norm(
    x: np.ndarray,
    alpha: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    *,
    zero_point: int,
    epsilon: int,
    gamma_shift: int,
    output_dtype: int = TensorProto.UINT8,
) -> np.ndarray:
    """IntLayerNorm over the last axis; returns uint8 or int8 codes (README steps 1-10)."""
    _check_layer_norm(x, alpha, gamma, beta, epsilon, gamma_shift, output_dtype)
    c = x.shape[-1]
    xt = (as_int64(x) - zero_point) * (np.int64(1) << as_int64(alpha))
    s1 = xt.sum(axis=-1, keepdims=True)
    s2 = (xt * xt).sum(axis=-1, keepdims=True)
    d = c * s2 - s1 * s1
    sig = isqrt((d << EPS_FRAC_BITS) + c * c * epsilon)
    r = (np.int64(1) << RECIP_BITS) // np.maximum(sig, 1)
    z = rnd_shift((c * xt - s1) * r, RECIP_BITS - 6 - Z_FRAC_BITS)
    a = z * as_int64(gamma) + as_int64(beta)
    lo, hi = OUTPUT_RANGES[output_dtype]
    y = np.clip(rnd_shift(a, Z_FRAC_BITS + gamma_shift), lo, hi)
    return y.astype(_OUTPUT_NUMPY[output_dtype])


def _check_layer_norm(x, alpha, gamma, beta, epsilon, gamma_shift, output_dtype) -> None:
    if x.dtype not in (np.uint8, np.int8):
        raise OnnxvqError(f"IntLayerNorm input must be uint8 or int8, got {x.dtype}")
    c = x.shape[-1] if x.ndim else 0
    if not 1 <= c <= MAX_CHANNELS:
        raise OnnxvqError(f"IntLayerNorm supports 1..{MAX_CHANNELS} channels, got {c}")
    for name, arr in (("alpha", alpha), ("gamma", gamma), ("beta", beta)):
        if np.shape(arr) != (c,):
            raise OnnxvqError(f"IntLayerNorm {name} must have shape ({c},), got {np.shape(arr)}")
    if np.any(np.asarray(alpha) > 3):
        raise OnnxvqError("IntLayerNorm alpha values must lie in 0..3")
    if not 0 <= epsilon <= EPS_MAX or not 0 <= gamma_shift <= GAMMA_SHIFT_MAX:
        raise OnnxvqError("IntLayerNorm epsilon or gamma_shift out of range")
    if output_dtype not in OUTPUT_RANGES:
        raise OnnxvqError(f"IntLayerNorm output_dtype must be UINT8 or INT8, got {output_dtype}")


def layernorm_params(
    gamma: np.ndarray,
    beta: np.ndarray,
    s1: float,
    alpha: np.ndarray,
    zp: int,
    out_scale: float,
    out_zp: int,
    *,
    eps: float = 1e-6,
    output_dtype: int = TensorProto.UINT8,
) -> LayerNormParams:
    """Fold LayerNorm's float (gamma, beta, eps) and the output quantization into integers.

    `s1` is the PTS base scale (channel c has scale 2^alpha_c * s1), `zp` the input zero point,
    `(out_scale, out_zp)` the quantization of the LayerNorm output that Y's codes use.
    """
    gamma = np.asarray(gamma, np.float64)
    beta = np.asarray(beta, np.float64)
    if not (s1 > 0 and out_scale > 0 and np.all(np.isfinite(gamma)) and np.all(np.isfinite(beta))):
        raise OnnxvqError("layernorm_params needs positive scales and finite gamma/beta")
    lo, hi = OUTPUT_RANGES.get(output_dtype, (None, None))
    if lo is None or not lo <= out_zp <= hi:
        raise OnnxvqError(f"output zero point {out_zp} does not fit output dtype {output_dtype}")
    g = _gamma_shift(np.max(np.abs(gamma)) / out_scale)
    gamma_int = round_half_away(gamma / out_scale * 2.0**g)
    bound = 2.0 ** (39 - g)  # README: clipping here changes no output, keeps |beta| <= 2^55
    beta_int = round_half_away(np.clip(beta / out_scale + out_zp, -bound, bound) * 2.0 ** (16 + g))
    epsilon = int(np.clip(round_half_away(eps * 2.0**EPS_FRAC_BITS / s1**2), 0, EPS_MAX))
    return LayerNormParams(
        alpha=np.asarray(alpha).astype(np.uint8),
        gamma=gamma_int.astype(np.int32),
        beta=beta_int.astype(np.int64),
        zero_point=int(zp),
        epsilon=epsilon,
        gamma_shift=g,
        output_dtype=output_dtype,
    )


def _gamma_shift(max_ratio: float) -> int:
    for g in range(GAMMA_SHIFT_MAX, -1, -1):
        if round_half_away(max_ratio * 2.0**g) <= GAMMA_LIMIT:
            return g
    raise OnnxvqError(
        f"LayerNorm gamma/out_scale up to {max_ratio:.3g} does not fit int32 at shift 0: "
        "the output scale is too small"
    )


def dequantize_output(y: np.ndarray, out_scale: float, out_zp: int) -> np.ndarray:
    """Float value of IntLayerNorm codes (what DequantizeLinear(Y, s_out, zp_out) gives)."""
    return (y.astype(np.float64) - out_zp) * out_scale
