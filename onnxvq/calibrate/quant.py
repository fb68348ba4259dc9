"""Uniform quantization formulas shared by every observer (methods.md, "Uniform quantization").

- asymmetric: `s = (max - min) / (2^b - 1)` over a range widened to include 0, so that the real
  value 0 (padding, ReLU zeros, attention masks) is an exact integer code; `zp = clamp(round(qmin -
  min/s))`.
- symmetric: `s = max|x| / (2^(b-1) - 1)`; dividing by 127.5 as FQ-ViT does would clip the largest
  value by half a step. The zero point is 0 (signed) or 2^(b-1) (unsigned).

Scales are guarded: a zero range gives scale 1.0 (any scale represents an all-zero tensor exactly)
and a positive range never gives a scale below the smallest normal float32, because ONNX Runtime
runs with denormals flushed to zero and a denormal scale would become a division by zero.
"""

from __future__ import annotations

import numpy as np

_TINY = float(np.finfo(np.float32).tiny)


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """The integer code range [qmin, qmax] of a `bits`-bit type."""
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be in 2..16, got {bits}")
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def guard_scale(scale: float | np.ndarray) -> float | np.ndarray:
    """Replace zero scales by 1.0 and clamp positive ones to a normal float32."""
    s = np.asarray(scale, dtype=np.float64)
    s = np.where(s > 0, np.maximum(s, _TINY), 1.0)
    return float(s) if s.ndim == 0 else s


def qparams_from_range(
    lo: float, hi: float, bits: int = 8, *, symmetric: bool = False, signed: bool = False
) -> tuple[float, int]:
    """(scale, zero_point) for a real range [lo, hi] with the methods.md formulas."""
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
        raise ValueError(f"invalid range [{lo}, {hi}]")
    qmin, qmax = qrange(bits, signed)
    if symmetric:
        amax = max(abs(lo), abs(hi))
        scale = guard_scale(amax / (2 ** (bits - 1) - 1))
        return scale, 0 if signed else 2 ** (bits - 1)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = guard_scale((hi - lo) / (qmax - qmin))
    zp = int(np.clip(np.round(qmin - lo / scale), qmin, qmax))
    return scale, zp


def quantize(x: np.ndarray, scale, zero_point, qmin: int, qmax: int) -> np.ndarray:
    """Integer codes (as float64) with round-half-to-even, as ONNX QuantizeLinear rounds."""
    return np.clip(np.round(np.asarray(x, dtype=np.float64) / scale) + zero_point, qmin, qmax)


def fake_quant(x: np.ndarray, scale, zero_point, qmin: int, qmax: int) -> np.ndarray:
    """Quantize then dequantize (float64): the value the quantized graph computes with."""
    return (quantize(x, scale, zero_point, qmin, qmax) - zero_point) * scale
