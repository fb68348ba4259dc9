"""Error metrics of a quantized output against its FP32 reference, written once.

All sums run in float64. SQNR is `10·log10(Σ ref² / Σ (ref − out)²)`: +inf when the outputs are
identical, −inf when the reference is all zeros and the output is not. Cosine is clipped to
[−1, 1] (rounding can push it a hair past 1); two all-zero vectors have cosine 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_TINY = 1e-12  # floor of |ref| in relative errors


def sqnr_db(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    """SQNR in dB of `out` against `ref` (the same size, any shapes), summed in float64."""
    a = np.asarray(ref, np.float64).ravel()
    d = a - np.asarray(out, np.float64).ravel()
    return sqnr_db(float(a @ a), float(d @ d))


def cosine(dot: float, ref_sq: float, out_sq: float) -> float:
    """cos from the dot product and the two squared norms."""
    if dot == ref_sq == out_sq:  # identical outputs: exactly 1 (the product of two square roots
        return 1.0               # can round to 1 - 2^-53, as on an AVX2 numpy build)
    denom = math.sqrt(ref_sq) * math.sqrt(out_sq)
    if denom == 0:
        return float(ref_sq == out_sq)
    return float(min(1.0, max(-1.0, dot / denom)))


def error_stats(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """Absolute/relative error statistics (max, mean, median), cosine and SQNR of `out`."""
    ref = np.asarray(ref, dtype=np.float64).ravel()
    out = np.asarray(out, dtype=np.float64).ravel()
    err = np.abs(out - ref)
    rel = err / np.maximum(np.abs(ref), _TINY)
    signal, noise = float(ref @ ref), float(err @ err)
    return {"max_abs": float(err.max(initial=0.0)), "mean_abs": float(err.mean()),
            "median_abs": float(np.median(err)), "max_rel": float(rel.max(initial=0.0)),
            "mean_rel": float(rel.mean()), "median_rel": float(np.median(rel)),
            "cosine": cosine(float(ref @ out), signal, float(out @ out)),
            "sqnr_db": sqnr_db(signal, noise)}


def sample_cosines(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Cosine per sample (first axis) of two batches."""
    a = np.asarray(ref, np.float64).reshape(len(ref), -1)
    b = np.asarray(out, np.float64).reshape(a.shape)
    return np.array([cosine(float(x @ y), float(x @ x), float(y @ y)) for x, y in zip(a, b,
                                                                                     strict=True)])


@dataclass
class Running:
    """Streaming SQNR/cosine/max-abs over batches, memory O(1)."""

    signal: float = 0.0
    noise: float = 0.0
    dot: float = 0.0
    out_sq: float = 0.0
    max_abs: float = 0.0
    count: int = 0

    def update(self, ref: np.ndarray, out: np.ndarray) -> Running:
        a = np.asarray(ref, np.float64).ravel()
        b = np.asarray(out, np.float64).ravel()
        if a.shape != b.shape:
            raise ValueError(f"shapes differ: {np.shape(ref)} vs {np.shape(out)}")
        d = a - b
        self.signal += float(a @ a)
        self.noise += float(d @ d)
        self.dot += float(a @ b)
        self.out_sq += float(b @ b)
        self.max_abs = max(self.max_abs, float(np.abs(d).max(initial=0.0)))
        self.count += a.size
        return self

    @property
    def sqnr_db(self) -> float:
        return sqnr_db(self.signal, self.noise)

    @property
    def cosine(self) -> float:
        return cosine(self.dot, self.signal, self.out_sq)


def format_db(v: float) -> str:
    """A dB figure for tables: two decimals, "inf" for identical outputs."""
    return "inf" if math.isinf(v) and v > 0 else f"{v:.2f}"


def top1_agreement(ref: np.ndarray, out: np.ndarray) -> int:
    """How many samples (first axis) have the same argmax in both."""
    a = np.asarray(ref).reshape(len(ref), -1)
    b = np.asarray(out).reshape(a.shape)
    return int((a.argmax(1) == b.argmax(1)).sum())
