"""A self-contained HTML report of one quantization: plots embedded as base64 PNG, no other files.

A denoiser's report (`verify.denoiser`) instead plots the noise-prediction SQNR per DDIM step of
the same seeded sampling loop run with both models, with the final sample's PSNR.
Sections: per-point SQNR of the quantized model, the per-channel ranges of LayerNorm inputs on the
calibration data (FQ-ViT Fig. 2: why PTS is needed), the post-Softmax distribution of one attention
against uniform and log2 4-bit levels (FQ-ViT Fig. 3: why LIS is needed), and the settings and
scales from the sidecar.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxvq.calibrate.collect import expose
from onnxvq.calibrate.observers import PerChannelMinMax
from onnxvq.calibrate.preprocess import Preprocess
from onnxvq.calibrate.spec import DataSpec, recorded_preprocess
from onnxvq.core.files import check_side_file, write_atomic
from onnxvq.core.metrics import format_db
from onnxvq.core.runtime import make_session
from onnxvq.verify import report_plots as plots
from onnxvq.verify.compare import as_model
from onnxvq.verify.denoiser import DenoiserComparison, compare_from_sidecar, is_denoiser
from onnxvq.verify.sensitivity import PointError, canonical_structure, layer_sqnr

log = logging.getLogger(__name__)

DEFAULT_SAMPLES = 32
_MAX_PROBS = 2_000_000  # values kept for the Softmax histogram


@dataclass
class ReportData:
    sidecar: dict
    points: list[PointError] | None  # None without a quantized model
    ln_ranges: dict[str, tuple[np.ndarray, np.ndarray]]  # LayerNorm input -> per-channel lo, hi
    probs_tensor: str | None
    probs: np.ndarray | None
    denoiser: DenoiserComparison | None = None  # a denoiser: the DDIM-loop comparison instead


def write_report(fp32_model, quant, data: DataSpec | str | os.PathLike | None,
                 path: str | os.PathLike, *, preprocess: Preprocess | None = None,
                 samples: int | None = None, batch_size: int | None = None,
                 seed: int | None = None, classes: int | None = None) -> Path:
    """Write the report for `fp32_model` quantized as `quant` (a QuantResult, a quantized .onnx
    with its `<name>.json` sidecar beside it, or a sidecar dict: then no SQNR section) on `data`
    (a DataSpec or the calibration images/tensors, None for noise; default 32 samples, with the
    sidecar's preprocessing unless given). A denoiser gets the DDIM-loop comparison with the
    recorded sampler settings (`classes`: its class count when the sidecar has none). Returns the
    path written."""
    check_side_file(path, "-o", (fp32_model, quant))  # before the work; never over an input
    q_model, sidecar = _quant_parts(quant)
    fp32 = as_model(fp32_model)
    if q_model is not None and is_denoiser(fp32, sidecar):  # its inputs are not images
        comparison = compare_from_sidecar(fp32, q_model, sidecar, samples=samples or 8,
                                          classes=classes)
        report = ReportData(sidecar, None, {}, None, None, comparison)
        return write_atomic(Path(path), render_html(report), what="report")
    spec = DataSpec.coerce(data, preprocess=preprocess, samples=samples, batch_size=batch_size,
                           seed=seed)
    spec = spec.with_(preprocess=spec.resolve_preprocess(recorded_preprocess(sidecar)),
                      samples=spec.samples or DEFAULT_SAMPLES)
    canonical, structure = canonical_structure(fp32_model, reuse=quant)
    points = None
    if q_model is not None:
        points = layer_sqnr((canonical, structure), q_model, spec)
    att = structure.attentions[len(structure.attentions) // 2] if structure.attentions else None
    lns = [ln.input for ln in structure.layernorms]
    ranges, probs = _statistics(canonical, lns, att.probs if att else None, spec)
    report = ReportData(sidecar, points, ranges, att.probs if att else None, probs)
    return write_atomic(Path(path), render_html(report), what="report")


def _quant_parts(quant) -> tuple[onnx.ModelProto | None, dict]:
    if isinstance(quant, dict):
        return None, quant
    if hasattr(quant, "sidecar") and hasattr(quant, "model"):
        return quant.model, quant.sidecar()
    path = Path(quant)
    side = path.with_suffix(".json")
    sidecar = json.loads(side.read_text()) if side.exists() else {}
    if not sidecar:
        log.warning("%s: no sidecar beside the model; the settings section will be empty", side)
    return as_model(path), sidecar


def _statistics(canonical: onnx.ModelProto, ln_inputs: list[str], probs: str | None,
                spec: DataSpec):
    """One FP32 run: per-channel min/max of each LayerNorm input and the values of `probs`."""
    names = list(dict.fromkeys(ln_inputs + ([probs] if probs else [])))
    graph_inputs = {i.name for i in canonical.graph.input}
    names = [n for n in names if n not in graph_inputs]
    if not names:
        return {}, None
    sess = make_session(expose(canonical, names))
    observers = {n: PerChannelMinMax(n, axis=-1) for n in ln_inputs if n in names}
    kept: list[np.ndarray] = []
    for feeds in spec.feeds(canonical, samples=DEFAULT_SAMPLES, batch_size=16):
        values = dict(zip(names, sess.run(names, feeds), strict=True))
        for name, obs in observers.items():
            obs.update(values[name])
        if probs and sum(k.size for k in kept) < _MAX_PROBS:
            kept.append(values[probs].ravel())
    ranges = {n: obs.range() for n, obs in observers.items()}
    return ranges, (np.concatenate(kept)[:_MAX_PROBS] if kept else None)


def render_html(report: ReportData) -> str:
    parts = [_HEAD, "<h1>onnxvq quantization report</h1>"]
    if report.denoiser is not None:
        parts += _denoiser_section(report.denoiser)
    else:
        parts += _sqnr_section(report.points)
        parts += _ln_section(report.ln_ranges)
        parts += _softmax_section(report.probs_tensor, report.probs)
    parts += _mixed_section(report.sidecar.get("mixed_precision") if report.sidecar else None)
    parts += _settings_section(report.sidecar)
    parts.append("</body></html>")
    return "\n".join(parts)


def _denoiser_section(c: DenoiserComparison) -> list[str]:
    png = plots.step_sqnr(c.timesteps, c.step_sqnr_db, c.final_psnr_db)
    rows = [(str(k), str(t), format_db(v)) for k, (t, v) in
            enumerate(zip(c.timesteps, c.step_sqnr_db, strict=True), start=1)]
    return ["<h2>Denoising trajectory</h2>",
            f"<p>The same seeded {c.steps}-step DDIM loop on {c.samples} samples with the FP32 "
            "and the quantized model, each on its own trajectory. Final sample: MSE "
            f"{c.final_mse:.4g}, PSNR {format_db(c.final_psnr_db)} (range [-1, 1]).</p>",
            _img(png, "noise-prediction SQNR per DDIM step"),
            _table(("step", "time step", "noise-prediction SQNR (dB)"), rows)]


def _sqnr_section(points: list[PointError] | None) -> list[str]:
    out = ["<h2>Per-layer SQNR</h2>"]
    if not points:
        return out + ["<p>No quantized model was given.</p>"]
    in_order = sorted(points, key=lambda p: p.probe.order)
    png = plots.sqnr_bars([p.label for p in in_order], [p.probe.kind for p in in_order],
                          [p.sqnr_db for p in in_order])
    rows = [(p.label, p.probe.tensor, format_db(p.sqnr_db), f"{p.cosine:.5f}") for p in points[:10]]
    return out + [_img(png, "per-layer SQNR"), "<p>Worst points first:</p>",
                  _table(("point", "tensor", "SQNR (dB)", "cosine"), rows)]


def _ln_section(ranges: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[str]:
    out = ["<h2>LayerNorm input ranges per channel</h2>"]
    if not ranges:
        return out + ["<p>No LayerNorm found.</p>"]
    spread = {n: _spread(lo, hi) for n, (lo, hi) in ranges.items()}
    worst = max(spread, key=spread.get)
    lo, hi = ranges[worst]
    png = plots.channel_ranges(lo, hi, f"{worst}: widest channel range / median range = "
                                       f"{spread[worst]:.1f}")
    rows = [(n, str(len(ranges[n][0])), f"{float(ranges[n][0].min()):.3g}",
             f"{float(ranges[n][1].max()):.3g}", f"{spread[n]:.1f}") for n in ranges]
    return out + [
        "<p>One scale for a whole LayerNorm input must cover its widest channel, so narrow "
        "channels get few levels; Power-of-Two Factors give each channel its own 2<sup>k</sup> "
        "multiple of the layer scale.</p>",
        _img(png, "channel ranges"),
        _table(("LayerNorm input", "channels", "min", "max", "max/median range"), rows)]


def _softmax_section(tensor: str | None, probs: np.ndarray | None) -> list[str]:
    out = ["<h2>Post-Softmax distribution</h2>"]
    if probs is None or tensor is None:
        return out + ["<p>No attention found.</p>"]
    png = plots.softmax_bins(probs, f"{tensor} ({probs.size:,} values)")
    return out + ["<p>Attention probabilities crowd near 0; 4-bit uniform levels send most of "
                  "them to 0, log2 levels (Log-Int-Softmax) keep them apart.</p>",
                  _img(png, "softmax distribution")]


def _mixed_section(mp: dict | None) -> list[str]:
    """Accuracy-aware mixed precision (verify/mixed.py): bits per Linear and the search."""
    if not mp:
        return []
    target = ", ".join(f"{k} {v}" for k, v in mp["target"].items() if v is not None)
    score = {r["node"]: r["score"] for r in mp["ranking"]}
    return ["<h2>Mixed precision</h2>",
            f"<p>Target {html.escape(target)} on {html.escape(str(mp['check']))}, ranked by "
            f"{html.escape(mp['rank_by'])}: {len(mp['raised'])} Linears raised; output SQNR "
            f"{mp['sqnr_db']:.1f} dB, top-1 agreement {100 * mp['agreement']:.1f} % "
            f"({'met' if mp['met'] else 'NOT met'}).</p>",
            _table(("Linear", "bits", "rank score"),
                   [(n, str(b), score.get(n, "")) for n, b in mp["layers"].items()]),
            _table(("search step", "Linears", "SQNR (dB)", "agreement"),
                   [(s["raised"], s["layers"], s["sqnr_db"], s["agreement"])
                    for s in mp["steps"]])]


def _settings_section(sidecar: dict) -> list[str]:
    out = ["<h2>Settings and scales</h2>"]
    if not sidecar:
        return out + ["<p>No sidecar.</p>"]
    config = sidecar.get("config", {})
    out.append(_table(("setting", "value"), [(k, json.dumps(v)) for k, v in config.items()]))
    out.append("<h3>Calibration</h3>")
    out.append(_table(("", ""), [(k, str(v)) for k, v in sidecar.get("calibration", {}).items()]))
    out.append("<h3>Passes</h3>")
    out.append(_table(("pass", "counts"), [(p.get("pass", "?"), json.dumps(
        {k: v for k, v in p.items() if k != "pass"})) for p in sidecar.get("passes", [])]))
    acts = sidecar.get("activations", {})
    out.append(f"<h3>Activation scales ({len(acts)})</h3>")
    out.append(_table(("tensor", "role", "bits", "scale", "zero point", "range"), [
        (t, str(q.get("role")), str(q.get("bits")), f"{q.get('scale', float('nan')):.6g}",
         str(q.get("zero_point")), "[" + ", ".join(f"{v:.4g}" for v in q.get("range", [])) + "]")
        for t, q in acts.items()]))
    weights = sidecar.get("weights", {})
    out.append(f"<h3>Weight scales ({len(weights)})</h3>")
    out.append(_table(("node", "bits", "channels", "scale min", "scale max"), [
        (n, str(w.get("bits")), str(len(np.atleast_1d(w.get("scale", [])))),
         f"{np.min(w['scale']):.4g}" if "scale" in w else "", f"{np.max(w['scale']):.4g}"
         if "scale" in w else "") for n, w in weights.items()]))
    skipped = sidecar.get("skipped", [])
    if skipped:
        out.append("<h3>Kept float</h3>")
        out.append(_table(("node", "reason"), [(s["node"], s["reason"]) for s in skipped]))
    return out


def _spread(lo: np.ndarray, hi: np.ndarray) -> float:
    width = np.asarray(hi, np.float64) - np.asarray(lo, np.float64)
    median = float(np.median(width))
    return float(width.max() / median) if median > 0 else math.inf


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,' \
           f'{base64.b64encode(png).decode("ascii")}">'


def _table(header: tuple[str, ...], rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_HEAD = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>onnxvq report</title><style>
body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
img{max-width:100%}</style></head><body>"""
