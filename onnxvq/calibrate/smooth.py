"""SmoothQuant's migration factors, with alpha searched per activation on the calibration data.

An activation X [..., C] feeding Linears W_k [C, D_k] is rescaled channel-wise, X' = X / s and
W_k' = diag(s) W_k (the folds are `passes/smooth_linear_inputs.py`), with

    s_j = max|X_j|^alpha / max_k max_d |W_k[j, d]|^(1 - alpha)

so the outlier channels of X move into the weights, which are quantized per output channel. One
ORT run gathers each activation's per-channel max|X| and an evenly strided sample of its rows
(`RowSample`); for each alpha in `ALPHAS` (and "no smoothing") the consumers' outputs are computed
in float and with X' quantized per tensor (min/max of the sample, the activation bits) and W'
per output channel (symmetric max), and the alpha of the lowest relative output error
||XW - Q(X')Q(W')||² / ||XW||² (summed over the consumers) wins. s is normalised to geometric
mean 1 (the quantized error does not depend on a common factor; this keeps γ/s near γ).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from onnxvq.calibrate.collect import collect
from onnxvq.calibrate.quant import qrange
from onnxvq.core.errors import CalibrationError

ALPHAS = tuple(round(0.05 * i, 2) for i in range(2, 20))  # 0.10 .. 0.95
ROWS = 4096  # rows of X kept per activation for the search


class RowSample:
    """Per-channel max|x| over all rows, and every `stride`-th row, the stride doubling whenever
    more than 2 x `rows` are kept (so between `rows` and 2 x `rows` rows, evenly spread)."""

    def __init__(self, name: str, rows: int = ROWS):
        self.name, self.rows = name, rows
        self.stride, self.seen = 1, 0
        self.absmax: np.ndarray | None = None
        self.kept: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        flat = np.asarray(x, dtype=np.float32).reshape(-1, np.shape(x)[-1])
        if not np.isfinite(flat).all():
            raise CalibrationError(f"tensor '{self.name}': non-finite values in calibration")
        cur = np.abs(flat).max(axis=0).astype(np.float64)
        self.absmax = cur if self.absmax is None else np.maximum(self.absmax, cur)
        new = flat[(-self.seen) % self.stride::self.stride]
        self.seen += len(flat)
        self.kept = new if self.kept is None else np.concatenate([self.kept, new])
        while len(self.kept) > 2 * self.rows:
            self.kept, self.stride = self.kept[::2], self.stride * 2

    def sample(self) -> np.ndarray:
        if self.kept is None:
            raise CalibrationError(f"observer of tensor '{self.name}' saw no data")
        return self.kept.astype(np.float64)


@dataclass(frozen=True)
class Smoothing:
    """The chosen factors of one activation: s [C] (None: no smoothing helps), alpha, and the
    relative output errors without and with it."""

    factors: np.ndarray | None
    alpha: float | None
    error_before: float
    error_after: float


def _quantize_rows(x: np.ndarray, bits: int, symmetric: bool) -> np.ndarray:
    """Fake-quantize x per tensor with its min/max."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if symmetric:
        scale = max(abs(lo), hi) / (2 ** (bits - 1) - 1) or 1.0
        return np.clip(np.round(x / scale), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * scale
    qmin, qmax = qrange(bits, False)
    scale = (hi - lo) / (qmax - qmin) or 1.0
    zp = np.round(qmin - lo / scale)
    return (np.clip(np.round(x / scale) + zp, qmin, qmax) - zp) * scale


def _quantize_weight(w: np.ndarray, bits: int) -> np.ndarray:
    """Fake-quantize w [C, D] per output column (symmetric max), as quantize-weights does."""
    qmax = 2 ** (bits - 1) - 1
    scale = np.abs(w).max(axis=0) / qmax
    scale = np.where(scale > 0, scale, 1.0)
    return np.clip(np.round(w / scale), -qmax - 1, qmax) * scale


def output_error(x: np.ndarray, weights: list[np.ndarray], s: np.ndarray, a_bits: int,
                 w_bits: int, symmetric: bool) -> float:
    """Relative output error of the consumers with X / s and diag(s) W quantized."""
    xq = _quantize_rows(x / s, a_bits, symmetric)
    err = ref = 0.0
    for w in weights:
        y = x @ w
        err += float(((y - xq @ _quantize_weight(w * s[:, None], w_bits)) ** 2).sum())
        ref += float((y ** 2).sum())
    return err / max(ref, 1e-30)


def search_alpha(x: np.ndarray, absmax: np.ndarray, weights: list[np.ndarray], a_bits: int,
                 w_bits: int, symmetric: bool = False,
                 alphas: Iterable[float] = ALPHAS) -> Smoothing:
    """The alpha (or none) of the lowest output error on the sample `x` [N, C]."""
    wmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    live = (absmax > 0) & (wmax > 0)
    base = output_error(x, weights, np.ones(x.shape[1]), a_bits, w_bits, symmetric)
    best = Smoothing(None, None, base, base)
    for alpha in alphas:
        s = np.ones_like(absmax)
        s[live] = absmax[live] ** alpha / wmax[live] ** (1.0 - alpha)
        s[live] /= np.exp(np.log(s[live]).mean())
        s = np.clip(s, 1e-4, 1e4).astype(np.float32).astype(np.float64)
        err = output_error(x, weights, s, a_bits, w_bits, symmetric)
        if err < best.error_after:
            best = Smoothing(s, alpha, base, err)
    return best


def smoothing_factors(model: onnx.ModelProto, sites: Mapping[str, list[np.ndarray]],
                      feeds: Callable[[], Iterable], a_bits: int, w_bits: int,
                      symmetric: bool = False) -> dict[str, Smoothing]:
    """{tensor: Smoothing} for each activation in `sites` (tensor -> its consumers' weights as
    [C, D] arrays), from one run over `feeds()`."""
    if not sites:
        return {}
    observed = collect(model, list(sites), feeds(), RowSample)
    return {t: search_alpha(observed[t].sample(), observed[t].absmax, ws, a_bits, w_bits,
                            symmetric) for t, ws in sites.items()}
