"""The report's figures as PNG bytes (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np

_KIND_COLOURS = {"attention-probs": "#d62728", "layernorm": "#1f77b4", "mlp": "#2ca02c",
                 "residual": "#7f7f7f", "output": "#000000"}


def _figure(width: float = 9.0, height: float = 3.6, cols: int = 1):
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, cols, figsize=(width, height), dpi=100)
    return fig, axes


def _png(fig) -> bytes:
    from matplotlib import pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def sqnr_bars(labels: Sequence[str], kinds: Sequence[str], sqnr: Sequence[float]) -> bytes:
    """SQNR per measurement point in graph order, coloured by the kind of point."""
    fig, ax = _figure(width=max(9.0, 0.22 * len(labels)), height=4.2)
    finite = [v for v in sqnr if math.isfinite(v)]
    cap = (max(finite) + 10.0) if finite else 100.0
    shown = [min(v, cap) if not math.isnan(v) else 0.0 for v in sqnr]
    ax.bar(range(len(shown)), shown, color=[_KIND_COLOURS.get(k, "#9467bd") for k in kinds])
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_ylabel("SQNR (dB)")
    ax.set_title("SQNR of the quantized model at each point (higher is better)")
    for kind, colour in _KIND_COLOURS.items():
        if kind in kinds:
            ax.bar([0], [0], color=colour, label=kind)
    ax.legend(fontsize=7, ncols=5, loc="lower left")
    return _png(fig)


def channel_ranges(lo: np.ndarray, hi: np.ndarray, title: str) -> bytes:
    """Per-channel [min, max] of one LayerNorm input (FQ-ViT Fig. 2): the spread between
    channels is what one layer-wide scale cannot cover and Power-of-Two Factors can."""
    fig, ax = _figure()
    ch = np.arange(len(lo))
    ax.bar(ch, hi - lo, bottom=lo, width=1.0, color="#1f77b4", edgecolor="none")
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.set_xlabel("channel")
    ax.set_ylabel("range of values")
    ax.set_xlim(-0.5, len(lo) - 0.5)
    ax.set_title(title, fontsize=9)
    return _png(fig)


def uniform_levels(bits: int = 4) -> np.ndarray:
    """Levels of uniform unsigned quantization of [0, 1]."""
    n = 2**bits - 1
    return np.arange(n + 1) / n


def log2_levels(bits: int = 4) -> np.ndarray:
    """Levels of log2 quantization of (0, 1] (FQ-ViT's LIS): 2^-k for k in 0..2^b-1, and 0."""
    return np.concatenate([[0.0], 2.0 ** -np.arange(2**bits - 1, -1, -1)])


def quantize_uniform(p: np.ndarray, bits: int = 4) -> np.ndarray:
    n = 2**bits - 1
    return np.round(np.clip(p, 0.0, 1.0) * n) / n


def quantize_log2(p: np.ndarray, bits: int = 4) -> np.ndarray:
    """round(-log2 p) clipped to the 2^b codes; codes past the last one mean 0."""
    with np.errstate(divide="ignore"):
        k = np.round(-np.log2(np.clip(p, 0.0, 1.0)))
    top = 2**bits - 1
    return np.where(k > top, 0.0, 2.0 ** -np.minimum(k, top))


def softmax_bins(probs: np.ndarray, title: str, bits: int = 4) -> bytes:
    """Histogram of post-Softmax values with uniform vs log2 `bits`-bit levels (FQ-ViT Fig. 3)."""
    probs = probs[probs > 0]
    fig, axes = _figure(width=10.0, height=3.8, cols=2)
    lo = max(float(probs.min()), 1e-8) if probs.size else 1e-8
    edges = np.logspace(np.log10(lo), 0.0, 80)
    quantizers = (("uniform", uniform_levels(bits), quantize_uniform),
                  ("log2", log2_levels(bits), quantize_log2))
    counts, _ = np.histogram(probs, bins=edges)
    for ax, (name, levels, fn) in zip(axes, quantizers, strict=True):
        # one stairs artist and one line collection: per-bar patches make log axes slow
        ax.stairs(counts, edges, fill=True, color="#7f7f7f")
        ax.vlines(levels[levels > 0], 0, 1, transform=ax.get_xaxis_transform(),
                  color="#d62728", linewidth=0.6)
        q = fn(probs, bits)
        zero = float((q == 0).mean())
        mse = float(np.mean((q - probs) ** 2))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.minorticks_off()  # log-axis minor ticks cost seconds in tight_layout
        ax.set_xlabel("attention probability")
        ax.set_title(f"{bits}-bit {name}: {zero:.0%} of values -> 0, MSE {mse:.2e}", fontsize=9)
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def step_sqnr(timesteps: Sequence[int], sqnr: Sequence[float], psnr: float) -> bytes:
    """Noise-prediction SQNR per DDIM step, in sampling order (Q-Diffusion's error accumulation:
    each model runs on its own trajectory, so a falling curve is error carried over steps)."""
    fig, ax = _figure(height=3.8)
    finite = [v for v in sqnr if math.isfinite(v)]
    cap = (max(finite) + 10.0) if finite else 100.0
    steps = np.arange(1, len(sqnr) + 1)
    ax.plot(steps, [min(v, cap) for v in sqnr], marker="o", color="#1f77b4")
    ax.set_xticks(steps, [f"{k}\nt={t}" for k, t in zip(steps, timesteps, strict=True)],
                  fontsize=6)
    ax.set_xlabel("DDIM step (time step)")
    ax.set_ylabel("noise-prediction SQNR (dB)")
    ax.set_title(f"quantized vs FP32 along the sampling loop; final sample PSNR {psnr:.2f} dB",
                 fontsize=9)
    ax.grid(alpha=0.3)
    return _png(fig)
