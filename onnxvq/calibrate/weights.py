"""Weight quantizers fit for 4 bits, without gradients.

All keep the deployed format (symmetric, per output channel, `scale_c` and integer codes in
[-(2^(b-1)-1), 2^(b-1)-1]); they choose the scales and the codes better than `max|w_c| / qmax` and
round-to-nearest:

- `mse`: per-channel clipping `scale_c = a_c max|w_c| / qmax`, a_c in {1, 0.98, ..., 0.50},
  searched on the weight's own squared error.
- `output`: the same search on the layer's output error over the calibration data,
  `E||x (w_c - w^_c)||^2 = d_c^T H d_c` with `H = E[x^T x]` (second moments of the Linear's input).
- `gptq`: GPTQ/OBQ closed-form rounding with `H`: columns (input features) quantized one at a
  time, each one's rounding error spread over the not-yet-quantized ones through the Cholesky
  factor of H^-1 (dampened by 1 % of its mean diagonal), on `output`-searched scales.
- bias correction: `bias += E[x] (W - W^)`, the mean output shift the quantized weight causes.

Statistics come from `SecondMoments` observers (streaming sums of x^T x and x over every row of
every calibration batch: memory C x C per Linear, flat in the number of images).
"""

from __future__ import annotations

import numpy as np

from onnxvq.calibrate.observers import Observer
from onnxvq.core.config import WEIGHT_METHODS
from onnxvq.core.errors import CalibrationError

_ALPHAS = 1.0 - 0.02 * np.arange(26)


class SecondMoments:
    """Streaming E[x^T x] and E[x] over the last axis of an activation."""

    def __init__(self, name: str = "?"):
        self.name, self.rows = name, 0
        self.xtx: np.ndarray | None = None
        self.sum: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        # float32 GEMM per batch (a few thousand rows), float64 across batches
        flat = np.asarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
        xtx = flat.T @ flat
        if not np.isfinite(xtx).all():
            raise CalibrationError(f"tensor '{self.name}' contains NaN or Inf")
        if self.xtx is None:
            self.xtx, self.sum = np.zeros((flat.shape[1],) * 2), np.zeros(flat.shape[1])
        self.xtx += xtx
        self.sum += flat.sum(0, dtype=np.float64)
        self.rows += flat.shape[0]

    @property
    def hessian(self) -> np.ndarray:
        return self.xtx / max(self.rows, 1)

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.rows, 1)


def _round(w: np.ndarray, scale: np.ndarray, qmax: int) -> np.ndarray:
    """Codes of w [out, in] with per-row scales."""
    return np.clip(np.rint(w / scale[:, None]), -qmax, qmax)


def clip_scales(w: np.ndarray, bits: int, hessian: np.ndarray | None = None) -> np.ndarray:
    """Per-row (output channel) scales of w [out, in] with the lowest error: the weight's own
    squared error, or with `hessian` the output error d^T H d."""
    qmax = 2 ** (bits - 1) - 1
    amax = np.maximum(np.abs(w).max(axis=1), 1e-12)
    best, best_err = amax / qmax, np.full(w.shape[0], np.inf)
    for a in _ALPHAS:
        s = (a * amax / qmax).astype(np.float32).astype(np.float64)
        d = w - _round(w, s, qmax) * s[:, None]
        err = (d**2).sum(1) if hessian is None else ((d @ hessian) * d).sum(1)
        better = err < best_err
        best, best_err = np.where(better, s, best), np.where(better, err, best_err)
    return best.astype(np.float32)


def gptq(w: np.ndarray, scale: np.ndarray, bits: int, hessian: np.ndarray,
         damp: float = 0.01) -> np.ndarray:
    """GPTQ codes of w [out, in] on fixed per-row scales; returns the integer codes."""
    qmax = 2 ** (bits - 1) - 1
    w = w.astype(np.float64).copy()
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0  # an input that is always 0 contributes nothing
    h += damp * np.mean(np.diag(h)) * np.eye(h.shape[0])
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: H^-1 = U^T U
    s = scale.astype(np.float64)
    q = np.zeros_like(w)
    for i in range(w.shape[1]):
        q[:, i] = np.clip(np.rint(w[:, i] / s), -qmax, qmax)
        err = (w[:, i] - q[:, i] * s) / u[i, i]
        w[:, i + 1:] -= np.outer(err, u[i, i + 1:])
    return q


def quantize_rows(w: np.ndarray, bits: int, method: str, moments: SecondMoments | None,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(codes [out, in], scales [out]) of w [out, in] with a `WEIGHT_METHODS` method."""
    if method not in WEIGHT_METHODS:
        raise CalibrationError(f"unknown weight method {method!r}; choose one of "
                               f"{', '.join(WEIGHT_METHODS)}")
    w = np.asarray(w, dtype=np.float64)
    qmax = 2 ** (bits - 1) - 1
    if method in ("output", "gptq") and moments is None:
        raise CalibrationError(f"weight method {method!r} needs calibration statistics")
    if method == "max":
        scale = np.maximum(np.abs(w).max(1) / qmax, 1e-12).astype(np.float32)
    else:
        scale = clip_scales(w, bits, moments.hessian if method != "mse" else None)
    s = scale.astype(np.float64)
    codes = gptq(w, s, bits, moments.hessian) if method == "gptq" else _round(w, s, qmax)
    return codes, scale


def bias_shift(w: np.ndarray, w_hat: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """E[x] (W - W^) for w, w_hat [out, in]: what to add to the bias."""
    return (np.asarray(w, np.float64) - w_hat) @ mean


class _WithMoments(Observer):
    """A site observer that also accumulates the site's second moments (same ORT run)."""

    def __init__(self, main: Observer, moments: SecondMoments):
        super().__init__(main.name)
        self.main, self.moments = main, moments

    def _update(self, x, lo, hi):
        self.main.update(x)
        self.moments.update(x)

    def range(self):
        return self.main.range()

    def qparams(self, bits: int = 8, symmetric: bool = False, signed: bool = False):
        return self.main.qparams(bits, symmetric=symmetric, signed=signed)

    def __getattr__(self, name):  # e.g. PTS's `.exact` on a wrapped observer
        return getattr(self.__dict__["main"], name)


class MomentCollector:
    """Second moments of the given tensors, gathered by the main calibration run's observers."""

    def __init__(self, tensors):
        self.stats = {t: SecondMoments(t) for t in tensors}

    def wrap(self, make):
        def factory(name: str):
            obs = make(name)
            return _WithMoments(obs, self.stats[name]) if name in self.stats else obs
        return factory
