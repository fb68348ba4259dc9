"""Per-channel quantization parameters of an activation [..., C] (RepQ-ViT's post-LayerNorm
quantizer), from two runs over the calibration data: exact per-channel min/max first
(`PerChannelMinMax`), then per-channel histograms over those ranges (`ChannelHistogram`), on which
each channel's clipping range is searched for the lowest L2 error as OMSE does per tensor:
candidates `[lo_c, hi_c] * (1 - 0.01 i)`, i = 0..steps-1, the error of a candidate summed over the
histogram at `points` positions per bin (so memory is C x bins, flat in the number of images).
"""

from __future__ import annotations

import numpy as np

from onnxvq.calibrate.quant import guard_scale, qrange
from onnxvq.core.errors import CalibrationError


def channel_qparams(lo: np.ndarray, hi: np.ndarray, bits: int, *, symmetric: bool = False,
                    signed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised `qparams_from_range` (same formulas) -> (scale float32 [C], zero_point [C]).
    A channel that is constant 0 gets the mean scale of the others (so r = 1 for it)."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    qmin, qmax = qrange(bits, signed)
    if symmetric:
        raw = np.maximum(np.abs(lo), np.abs(hi)) / (2 ** (bits - 1) - 1)
    else:
        lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
        raw = (hi - lo) / (qmax - qmin)
    live = raw > 0
    if not live.any():
        raw = np.ones_like(raw)
    raw = np.where(live, raw, raw[live].mean() if live.any() else 1.0)
    scale = np.asarray(guard_scale(raw), np.float64).reshape(-1).astype(np.float32)
    if symmetric:
        zp = np.full(scale.shape, 0 if signed else 2 ** (bits - 1), dtype=np.int64)
    else:
        zp = np.clip(np.round(qmin - lo / scale.astype(np.float64)), qmin, qmax).astype(np.int64)
    return scale, zp


class ChannelHistogram:
    """Histograms per channel (last axis) over fixed ranges [lo_c, hi_c] known from a first run."""

    def __init__(self, name: str, lo: np.ndarray, hi: np.ndarray, bins: int = 512):
        self.name, self.bins = name, bins
        self.lo = np.asarray(lo, np.float64)
        width = (np.asarray(hi, np.float64) - self.lo) / bins
        self.width = np.where(width > 0, width, 1.0)
        self.counts = np.zeros((self.lo.size, bins), dtype=np.int64)

    def update(self, x: np.ndarray) -> None:
        c = self.lo.size
        if x.shape[-1] != c:
            raise CalibrationError(f"tensor '{self.name}': {x.shape[-1]} channels, expected {c}")
        flat = x.reshape(-1, c)
        idx = np.clip(((flat - self.lo) / self.width).astype(np.int64), 0, self.bins - 1)
        idx += np.arange(c, dtype=np.int64) * self.bins
        self.counts += np.bincount(idx.ravel(), minlength=c * self.bins).reshape(c, self.bins)

    def search(self, bits: int, *, symmetric: bool = False, signed: bool = False,
               steps: int = 90, points: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (scale, zero_point) of the lowest-error clipping candidate."""
        offsets = (np.arange(points) + 0.5) / points
        pos = (np.arange(self.bins)[:, None] + offsets).ravel()
        values = self.lo[:, None] + pos[None, :] * self.width[:, None]  # [C, bins*points]
        weights = np.repeat(self.counts, points, axis=1) / points
        hi = self.lo + self.bins * self.width
        qmin, qmax = qrange(bits, signed)
        best_err = np.full(self.lo.size, np.inf)
        best = (np.zeros(self.lo.size, np.float32), np.zeros(self.lo.size, np.int64))
        for i in range(steps):
            f = 1.0 - 0.01 * i
            s, z = channel_qparams(self.lo * f, hi * f, bits, symmetric=symmetric, signed=signed)
            s64, z64 = s.astype(np.float64)[:, None], z.astype(np.float64)[:, None]
            q = np.clip(np.round(values / s64) + z64, qmin, qmax)
            err = (((q - z64) * s64 - values) ** 2 * weights).sum(axis=1)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best = (np.where(better, s, best[0]), np.where(better, z, best[1]))
        return best[0].astype(np.float32), best[1].astype(np.int64)
