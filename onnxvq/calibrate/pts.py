"""Power-of-Two Scale (PTS) statistics for the LayerNorm inputs of FQ-ViT.

One layer-wise (s, zp) comes from the min/max of the whole tensor; with `s1 = s / 2^(levels-1)`
(s/8 for 4 levels) channel c is quantized with scale `2^alpha_c * s1`, alpha_c in 0..levels-1, and
the shared zero point zp. alpha_c minimises the L2 error of channel c over all calibration data.

Two ways to run it over the data (channels along `axis`, the last axis by default):

- two passes, exact: pass 1 `PerChannelMinMax` (or any observer with `tensor_range()`), then
  `pts_layer_qparams(lo, hi)`; pass 2 `PtsErrorObserver(name, scale, zp)` accumulates, per channel,
  the exact squared error of each candidate; `alphas()` is the argmin.
- one pass, from histograms: `PtsObserver` keeps a [C, bins] histogram on one shared grid; the
  layer (s, zp) come from the exact min/max and the candidate errors from the bins (values inside a
  bin are taken at `points` evenly spaced positions), so alphas may differ from the exact ones when
  two candidates' errors are within the binning error. Memory: C * bins * 8 bytes.
"""

from __future__ import annotations

import numpy as np

from onnxvq.calibrate.histogram import StreamingHistogram
from onnxvq.calibrate.observers import Observer
from onnxvq.calibrate.quant import fake_quant, qparams_from_range, qrange


def pts_layer_qparams(lo: float, hi: float, bits: int = 8, *,
                      signed: bool = False) -> tuple[float, int]:
    """The layer-wise (s, zp) of the whole tensor: asymmetric unsigned, or with `signed`
    symmetric int8 with zero point 0 (TensorRT accepts nothing else)."""
    return qparams_from_range(lo, hi, bits, symmetric=signed, signed=signed)


def pts_candidate_scales(scale: float, levels: int = 4) -> np.ndarray:
    """`2^alpha * s / 2^(levels-1)` for alpha = 0..levels-1 (the largest equals s)."""
    return scale * 2.0 ** (np.arange(levels) - (levels - 1))


def pts_shifts(errors: np.ndarray) -> np.ndarray:
    """alpha per channel from accumulated candidate errors [C, levels]; ties pick the smallest."""
    return np.argmin(errors, axis=1).astype(np.int64)


def _channels_last(x: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])


class PtsErrorObserver(Observer):
    """Pass 2 of exact PTS: per channel, sum of squared errors of each candidate scale."""

    def __init__(self, name: str, scale: float, zero_point: int, *, axis: int = -1,
                 bits: int = 8, levels: int = 4, signed: bool = False):
        super().__init__(name)
        self.axis, self.bits, self.levels, self.signed = axis, bits, levels, signed
        self.scale, self.zero_point = float(scale), int(zero_point)
        self.candidates = pts_candidate_scales(self.scale, levels)
        self.errors: np.ndarray | None = None  # [C, levels], float64
        self.lo, self.hi = np.inf, -np.inf

    def _update(self, x, lo, hi):
        rows = _channels_last(x, self.axis).astype(np.float64)
        qmin, qmax = qrange(self.bits, self.signed)
        err = np.stack([((rows - fake_quant(rows, s, self.zero_point, qmin, qmax)) ** 2).sum(0)
                        for s in self.candidates], axis=1)
        self.errors = err if self.errors is None else self.errors + err
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)

    def range(self):
        self._require_data()
        return self.lo, self.hi

    def alphas(self) -> np.ndarray:
        self._require_data()
        return pts_shifts(self.errors)

    def params(self) -> tuple[float, int, np.ndarray]:
        """(layer scale, zero point, alphas[C])."""
        return self.scale, self.zero_point, self.alphas()


class PtsObserver(Observer):
    """One-pass PTS from per-channel histograms on a shared grid (approximate, see module doc)."""

    def __init__(self, name: str = "?", *, channels: int | None = None, axis: int = -1,
                 bits: int = 8, levels: int = 4, bins: int = 2048, points: int = 4):
        super().__init__(name)
        self.axis, self.bits, self.levels, self.points = axis, bits, levels, points
        self.bins = bins
        self.hist = StreamingHistogram(bins, channels) if channels else None

    def _update(self, x, lo, hi):
        rows = _channels_last(x, self.axis)
        if self.hist is None:
            self.hist = StreamingHistogram(self.bins, rows.shape[1])
        self.hist.add(rows, lo, hi)

    def range(self):
        self._require_data()
        return self.hist.min, self.hist.max

    def layer_qparams(self) -> tuple[float, int]:
        return pts_layer_qparams(*self.range(), self.bits)

    def candidate_errors(self) -> np.ndarray:
        """[C, levels] squared errors estimated from the histogram."""
        scale, zp = self.layer_qparams()
        h = self.hist
        offsets = (np.arange(self.points) + 0.5) / self.points
        values = h.origin + (np.arange(h.bins)[:, None] + offsets).ravel() * h.width
        weights = np.repeat(h.counts, self.points, axis=1) / self.points  # [C, bins * points]
        qmin, qmax = qrange(self.bits, False)
        sq = np.stack([(values - fake_quant(values, s, zp, qmin, qmax)) ** 2
                       for s in pts_candidate_scales(scale, self.levels)], axis=1)
        return weights @ sq

    def alphas(self) -> np.ndarray:
        return pts_shifts(self.candidate_errors())

    def params(self) -> tuple[float, int, np.ndarray]:
        """(layer scale, zero point, alphas[C])."""
        return (*self.layer_qparams(), self.alphas())
