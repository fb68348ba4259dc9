"""PTQ4ViT twin-uniform quantizers, numpy reference (the deployed graph must equal these).

b bits = one range bit + b-1 code bits per range, k = 2^(b-1) - 1 codes above zero in each:

- post-Softmax: `x < t` -> `clip(round(x / d1), 0, k) * d1`, else `clip(round(x / d2), 0, k) * d2`,
  with `d2 = 2^m * d1` (a power of two apart, so an integer kernel can align the two code sets by
  a shift) and `t = (k + 1/2) * d1`, the first value the fine range cannot code. A value in the
  large range is coded by the large step alone: the PTQ4ViT reference adds the split value to every
  large value, so its large range reconstructs `x + t`; here `|x̂ - x| <= d2 / 2` (tested).
- post-GELU: `x < 0` -> `clip(round(x / dn), -k, 0) * dn`, else `clip(round(x / dp), 0, k) * dp`.

Both split a tensor into two non-overlapping parts, `x = x·[x in R1] + x·[x in R2]`, each quantized
uniformly with zero mapped to zero, so `W·x̂ = W·Q1(x1) + W·Q2(x2)`: the deployed form is two
Q/DQ branches into two copies of the consuming MatMul, summed (`passes/twin_qdq.py`).
"""

from __future__ import annotations

import numpy as np


def levels(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def softmax_threshold(d1: float, bits: int) -> float:
    return (levels(bits) + 0.5) * d1


def twin_softmax(x: np.ndarray, d1: float, d2: float, bits: int) -> np.ndarray:
    k = levels(bits)
    x = np.asarray(x, np.float64)
    fine = np.clip(np.round(x / d1), 0, k) * d1
    coarse = np.clip(np.round(x / d2), 0, k) * d2
    return np.where(x < softmax_threshold(d1, bits), fine, coarse)


def twin_gelu(x: np.ndarray, dn: float, dp: float, bits: int) -> np.ndarray:
    k = levels(bits)
    x = np.asarray(x, np.float64)
    neg = np.clip(np.round(x / dn), -k, 0) * dn
    pos = np.clip(np.round(x / dp), 0, k) * dp
    return np.where(x < 0, neg, pos)


def softmax_candidates(hi: float, bits: int, shifts: int = 8) -> list[tuple[float, float]]:
    """(d1, d2) with d2 covering [0, hi] and d1 = d2 / 2^m, m = 0 (plain uniform) .. shifts."""
    d2 = max(float(hi), 1e-8) / levels(bits)
    return [(d2 / 2.0**m, d2) for m in range(shifts + 1)]


def gelu_candidates(lo: float, hi: float, bits: int, factors) -> list[tuple[float, float]]:
    """(dn, dp): dn covers the (small) negative range exactly, dp is searched over hi * f."""
    dn = max(-float(lo), 1e-8) / levels(bits)
    return [(dn, max(float(hi) * f, 1e-8) / levels(bits)) for f in factors]
