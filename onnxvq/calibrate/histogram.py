"""A streaming histogram whose memory is flat in the number of samples.

The histogram keeps a fixed number of equal-width bins (a power of two) on a grid `origin + k *
width`. When a batch falls outside the grid, the grid grows by merging groups of `f = 2^m` adjacent
bins (and shifting the origin by whole old bins). Merging along old bin boundaries is exact: every
count stays in a bin that contains all the values it counted, so the total count and the ordering of
values are conserved; only the resolution drops.

Binning error: the grid after any growth has a bin width of at most about `2 * (max - min) / (bins -
2)` of all the data seen (the first batch sets the width to its own range / bins; each growth picks
the smallest power-of-two merge that covers the occupied bins plus the new batch). A value is known
only to lie inside its bin, so a quantile read from the histogram is off by at most one bin width
(the estimate interpolates linearly inside the bin), e.g. <= 0.1 % of the range with 2048 bins.

With `channels=C` the histogram is two-dimensional ([C, bins]): every channel shares the one grid,
so a growth merges all channels identically (PTS uses this to compare candidate scales per channel).
"""

from __future__ import annotations

import math

import numpy as np


class StreamingHistogram:
    """Counts of values on a growing, shared grid; `add` takes flat values or [rows, C] blocks."""

    def __init__(self, bins: int = 2048, channels: int | None = None):
        if bins < 16 or bins & (bins - 1):
            raise ValueError(f"bins must be a power of two >= 16, got {bins}")
        self.bins = bins
        self.channels = channels
        shape = (bins,) if channels is None else (channels, bins)
        self.counts = np.zeros(shape, dtype=np.int64)
        self.origin = 0.0
        self.width = 0.0
        self.min = math.inf
        self.max = -math.inf

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def empty(self) -> bool:
        return self.width == 0.0

    def centers(self) -> np.ndarray:
        return self.origin + (np.arange(self.bins) + 0.5) * self.width

    def add(self, x: np.ndarray, lo: float | None = None, hi: float | None = None) -> None:
        """Count `x` (its min/max may be passed in when the caller computed them already)."""
        if x.size == 0:
            return
        lo = float(x.min()) if lo is None else lo
        hi = float(x.max()) if hi is None else hi
        if self.empty:
            self._start(lo, hi)
        else:
            self._cover(lo, hi)
        # float64: float32 would misplace values whose magnitude dwarfs the bin width. In place,
        # and clip before the cast: truncation equals floor on the non-negative clipped values.
        y = x.astype(np.float64)
        y -= self.origin
        y *= 1.0 / self.width
        np.clip(y, 0, self.bins - 1, out=y)
        idx = y.astype(np.intp)
        if self.channels is not None:
            idx = idx.reshape(-1, self.channels) + np.arange(self.channels) * self.bins
        self.counts += np.bincount(idx.ravel(), minlength=self.counts.size).reshape(
            self.counts.shape
        )
        self.min, self.max = min(self.min, lo), max(self.max, hi)

    def _start(self, lo: float, hi: float) -> None:
        span = hi - lo
        if span <= 0:  # a constant first batch: any small grid will do, growth widens it later
            span = max(abs(lo), 1.0) * 2.0**-20
        self.origin, self.width = lo, span / self.bins

    def _cover(self, lo: float, hi: float) -> None:
        w, n = self.width, self.bins
        if lo >= self.origin and (hi - self.origin) / w < n:
            return
        occupied = np.flatnonzero(self.counts.reshape(-1, n).any(axis=0))
        a, b = int(occupied[0]), int(occupied[-1])
        j = min(a, math.floor((lo - self.origin) / w))  # new origin, in old bins: aligned, <= lo
        f = 1
        while max((b - j) // f, math.floor((hi - self.origin - j * w) / (w * f))) > n - 1:
            f *= 2
        self.counts = self._merged(a, b, j, f)
        self.origin, self.width = self.origin + j * w, w * f

    def _merged(self, a: int, b: int, j: int, f: int) -> np.ndarray:
        """Old bin i (in [a, b]) goes to new bin (i - j) // f (python ints: j, f may be huge)."""
        new = np.zeros_like(self.counts)
        q0, r0 = divmod(a - j, f)
        old = self.counts[..., a : b + 1]
        if f >= self.bins:  # old bins land in at most two new bins
            t = f - r0
            new[..., q0] = old[..., :t].sum(axis=-1)
            if t <= b - a:
                new[..., q0 + 1] = old[..., t:].sum(axis=-1)
            return new
        targets = q0 + (r0 + np.arange(b - a + 1)) // f
        starts = np.flatnonzero(np.r_[True, np.diff(targets) > 0])
        new[..., targets[starts]] = np.add.reduceat(old, starts, axis=-1)
        return new

    def quantile(self, p: float) -> float:
        """The p-quantile of a 1-D histogram, linear inside the bin, clamped to the seen min/max."""
        total = self.total
        target = p * total
        if total == 0 or target <= 0:
            return self.min
        if target >= total:
            return self.max
        cum = np.cumsum(self.counts)
        k = int(np.searchsorted(cum, target, side="left"))
        prev = int(cum[k - 1]) if k else 0
        value = self.origin + (k + (target - prev) / self.counts[k]) * self.width
        return float(min(max(value, self.min), self.max))
