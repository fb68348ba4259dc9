"""Exact integer helpers shared by the references: bit length, rounding shift, integer square root.

All of them work elementwise on int64 numpy arrays and never touch floating point, so what they
return is the definition the other backends (ONNX functions, ORT and TensorRT kernels) must match.
"""

from __future__ import annotations

import numpy as np

# Newton from a power-of-two over-estimate (relative error <= 1) squares its error each step:
# after 6 steps it is < 1e-30, far below the 2^-32 gap between sqrt(v) and the next integer for
# v < 2^62, so the iterate has reached floor(sqrt(v)) (the integer iteration never goes below it).
ISQRT_STEPS = 6
ISQRT_LIMIT = 1 << 62


def as_int64(a: np.ndarray | int) -> np.ndarray:
    return np.asarray(a).astype(np.int64, copy=False)


def bit_length(v: np.ndarray | int) -> np.ndarray:
    """Number of bits of each non-negative int64 (0 for 0), by a 6-step binary search."""
    x = as_int64(v)
    if np.any(x < 0):
        raise ValueError("bit_length needs non-negative values")
    n = np.zeros(x.shape, np.int64)
    for s in (32, 16, 8, 4, 2, 1):
        big = (x >> s) > 0
        n = np.where(big, n + s, n)
        x = np.where(big, x >> s, x)
    return n + (x > 0)


def rnd_shift(a: np.ndarray, s: int | np.ndarray) -> np.ndarray:
    """a / 2^s rounded half away from zero (s >= 1), exactly: sign(a) * ((|a| + 2^(s-1)) >> s)."""
    a = as_int64(a)
    s = as_int64(s)
    half = np.left_shift(np.int64(1), s - 1)
    mag = (np.abs(a) + half) >> s
    return np.where(a < 0, -mag, mag)


def isqrt(v: np.ndarray | int) -> np.ndarray:
    """floor(sqrt(v)) for int64 0 <= v < 2^62, by a fixed number of integer Newton steps.

    Start: x = 2^ceil(L/2) with L = bit_length(v), so sqrt(v) <= x < 2 sqrt(v) (x = 1 for v = 0).
    Step:  x = min(x, (x + v // x) // 2); the integer iterate stays >= floor(sqrt(v)) (AM-GM) and
    reaches it within ISQRT_STEPS steps, after which the min keeps it there.
    """
    v = as_int64(v)
    if np.any(v < 0) or np.any(v >= ISQRT_LIMIT):
        raise ValueError("isqrt is defined for 0 <= v < 2^62")
    x = np.left_shift(np.int64(1), (bit_length(v) + 1) >> 1)
    for _ in range(ISQRT_STEPS):
        x = np.minimum(x, (x + v // np.maximum(x, 1)) >> 1)
    return x


def round_half_away(x: np.ndarray | float) -> np.ndarray:
    """Float rounding with the same tie rule as rnd_shift (used only when deriving parameters)."""
    x = np.asarray(x, np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)
