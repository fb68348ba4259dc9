"""Range observers: pure numpy statistics of one tensor over all calibration batches.

Every observer has `update(x)` (one batch), `range() -> (lo, hi)` and `qparams(bits, symmetric,
signed) -> (scale, zero_point)` (formulas in `calibrate.quant`). `update` rejects NaN/Inf with a
`CalibrationError` naming the observer's tensor. Memory never grows with the number of batches.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np

from onnxvq.calibrate.histogram import StreamingHistogram
from onnxvq.calibrate.quant import fake_quant, guard_scale, qparams_from_range, qrange
from onnxvq.core.errors import CalibrationError


def finite_range(x: np.ndarray, name: str) -> tuple[float, float]:
    """(min, max) of `x`; a NaN or an Inf anywhere makes one of them non-finite."""
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise CalibrationError(f"tensor '{name}' contains NaN or Inf during calibration")
    return lo, hi


class Observer(ABC):
    """Statistics of one tensor; subclasses implement `_update` and `range`.

    `range_only` observers read nothing of a batch but its (min, max): `collect` then computes
    those inside the ONNX Runtime graph (`update_range`), so the tensor itself never leaves it."""

    range_only = False

    def __init__(self, name: str = "?"):
        self.name = name
        self.batches = 0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.size == 0:
            return
        self._update(x, *finite_range(x, self.name))
        self.batches += 1

    def update_range(self, lo: float, hi: float, finite: bool = True) -> None:
        """One batch given by its min and max (range-only observers); `finite` False when the
        batch held a NaN or an Inf that the min/max themselves may not show."""
        if not (finite and math.isfinite(lo) and math.isfinite(hi)):
            raise CalibrationError(f"tensor '{self.name}' contains NaN or Inf during calibration")
        self._update(None, lo, hi)
        self.batches += 1

    @abstractmethod
    def _update(self, x: np.ndarray, lo: float, hi: float) -> None: ...

    @abstractmethod
    def range(self) -> tuple[float, float]: ...

    def qparams(self, bits: int = 8, symmetric: bool = False, signed: bool = False):
        lo, hi = self.range()
        return qparams_from_range(lo, hi, bits, symmetric=symmetric, signed=signed)

    def _require_data(self) -> None:
        if self.batches == 0:
            raise CalibrationError(f"observer of tensor '{self.name}' saw no data")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} batches={self.batches}>"


class MinMaxObserver(Observer):
    """Running min and max over all batches."""

    range_only = True

    def __init__(self, name: str = "?"):
        super().__init__(name)
        self.lo, self.hi = math.inf, -math.inf

    def _update(self, x, lo, hi):
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)

    def range(self):
        self._require_data()
        return self.lo, self.hi


class EmaObserver(Observer):
    """Moving average of per-batch min/max (FQ-ViT): the first batch initialises, then
    `m <- m + momentum * (cur - m)`. With momentum 0.01 and 10 batches it is mostly batch one."""

    range_only = True

    def __init__(self, name: str = "?", momentum: float = 0.01):
        super().__init__(name)
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum
        self.lo, self.hi = 0.0, 0.0

    def _update(self, x, lo, hi):
        if self.batches == 0:
            self.lo, self.hi = lo, hi
        else:
            self.lo += self.momentum * (lo - self.lo)
            self.hi += self.momentum * (hi - self.hi)

    def range(self):
        self._require_data()
        return self.lo, self.hi


class HistogramObserver(Observer):
    """A streaming histogram of all values (see `histogram.py` for its binning error); its range
    is the exact min/max, subclasses read clipped ranges from the histogram."""

    def __init__(self, name: str = "?", bins: int = 2048):
        super().__init__(name)
        self.hist = StreamingHistogram(bins)

    def _update(self, x, lo, hi):
        self.hist.add(x, lo, hi)

    def range(self):
        self._require_data()
        return self.hist.min, self.hist.max


class PercentileObserver(HistogramObserver):
    """Range [quantile(tail), quantile(1 - tail)] (1e-5 suits ViTs; 1e-4 clips them too hard)."""

    def __init__(self, name: str = "?", tail: float = 1e-5, bins: int = 2048):
        super().__init__(name, bins)
        if not 0.0 <= tail < 0.5:
            raise ValueError(f"tail must be in [0, 0.5), got {tail}")
        self.tail = tail

    def range(self):
        self._require_data()
        return self.hist.quantile(self.tail), self.hist.quantile(1.0 - self.tail)


class OmseObserver(HistogramObserver):
    """Search `[min, max] * (1 - 0.01 i)`, i = 0..89, for the lowest L2 quantization error over
    all calibration data. The error of a candidate is `sum_bins count * (v - qdq(v))^2` with `v` at
    `points` evenly spaced positions inside each bin (1 = the bin centre; 4 matched a brute-force
    search on the raw values where the centre alone was off by up to 3 candidates); clipping is
    included since qdq clamps. `range()` searches for the bits/mode given here, `qparams` for
    its own arguments."""

    def __init__(self, name: str = "?", bits: int = 8, symmetric: bool = False,
                 signed: bool = False, bins: int = 2048, points: int = 4, steps: int = 90):
        super().__init__(name, bins)
        self.bits, self.symmetric, self.signed = bits, symmetric, signed
        self.points, self.steps = points, steps

    def range(self):
        return self.search(self.bits, self.symmetric, self.signed)[0]

    def qparams(self, bits: int = 8, symmetric: bool = False, signed: bool = False):
        lo, hi = self.search(bits, symmetric, signed)[0]
        return qparams_from_range(lo, hi, bits, symmetric=symmetric, signed=signed)

    def search(self, bits: int, symmetric: bool, signed: bool):
        """((lo, hi) of the best candidate, errors of all candidates)."""
        self._require_data()
        h = self.hist
        nz = np.flatnonzero(h.counts)
        offsets = (np.arange(self.points) + 0.5) / self.points
        values = (h.origin + (nz[:, None] + offsets) * h.width).ravel()
        weights = np.repeat(h.counts[nz] / self.points, self.points)
        factors = 1.0 - 0.01 * np.arange(self.steps)
        ranges = [(h.min * f, h.max * f) for f in factors]
        qp = [qparams_from_range(lo, hi, bits, symmetric=symmetric, signed=signed)
              for lo, hi in ranges]
        scale = np.array([s for s, _ in qp])[:, None]
        zp = np.array([z for _, z in qp], dtype=np.float64)[:, None]
        err = ((values - fake_quant(values, scale, zp, *qrange(bits, signed))) ** 2) @ weights
        return ranges[int(np.argmin(err))], err


class PerChannelMinMax(Observer):
    """Min/max per channel along `axis` (weights, PTS statistics); `range()` returns arrays."""

    def __init__(self, name: str = "?", axis: int = -1):
        super().__init__(name)
        self.axis = axis
        self.lo: np.ndarray | None = None
        self.hi: np.ndarray | None = None

    def _update(self, x, lo, hi):
        axes = tuple(a for a in range(x.ndim) if a != self.axis % x.ndim)
        cur_lo, cur_hi = x.min(axis=axes), x.max(axis=axes)
        if self.lo is None:
            self.lo, self.hi = cur_lo.astype(np.float64), cur_hi.astype(np.float64)
        elif cur_lo.shape != self.lo.shape:
            raise CalibrationError(
                f"tensor '{self.name}': channel count changed from {self.lo.size} to {cur_lo.size}"
            )
        else:
            self.lo, self.hi = np.minimum(self.lo, cur_lo), np.maximum(self.hi, cur_hi)

    def range(self):
        self._require_data()
        return self.lo, self.hi

    def tensor_range(self) -> tuple[float, float]:
        lo, hi = self.range()
        return float(lo.min()), float(hi.max())

    def qparams(self, bits: int = 8, symmetric: bool = True, signed: bool = True):
        """Per-channel (scale[C], zero_point[C]); symmetric signed by default as for weights."""
        pairs = [qparams_from_range(lo, hi, bits, symmetric=symmetric, signed=signed)
                 for lo, hi in zip(*self.range(), strict=True)]
        return (np.array([s for s, _ in pairs], dtype=np.float32),
                np.array([z for _, z in pairs], dtype=np.int64))


def weight_qparams(w: np.ndarray, axis: int = 0, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric signed per-channel weight qparams: `scale[c] = max|w_c| / (2^(b-1) - 1)` as
    float32 (> 0 also for all-zero channels) and int8 zero points (all 0)."""
    w = np.asarray(w)
    if not np.isfinite(w).all():
        raise CalibrationError("weight contains NaN or Inf")
    axes = tuple(a for a in range(w.ndim) if a != axis % w.ndim)
    amax = np.abs(w.astype(np.float64)).max(axis=axes)
    scale = np.asarray(guard_scale(amax / (2 ** (bits - 1) - 1)), dtype=np.float32).reshape(-1)
    return scale, np.zeros(scale.shape, dtype=np.int8 if bits <= 8 else np.int16)


_METHODS = {
    "minmax": MinMaxObserver,
    "ema": EmaObserver,
    "percentile": PercentileObserver,
    "omse": OmseObserver,
}


def make_observer(method: str, name: str = "?", **opts) -> Observer:
    """An observer by method name ("minmax", "ema", "percentile", "omse") with its options."""
    try:
        cls = _METHODS[method.lower()]
    except KeyError:
        known = ", ".join(sorted(_METHODS))
        raise CalibrationError(f"unknown calibration method '{method}' (known: {known})") from None
    try:
        return cls(name, **opts)
    except TypeError as exc:
        raise CalibrationError(f"bad options for calibration method '{method}': {exc}") from None
