"""`onnxvq profile`: FP32 and quantized profiles side by side against the measured roofline, as
a dict (for `--json`), a roofline PNG and a self-contained HTML report."""

from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass

import onnx

from onnxvq.core.errors import UsageError
from onnxvq.verify.profile import ModelProfile, profile_models
from onnxvq.verify.roofline import Roofline, measure_roofline


@dataclass
class ProfileReport:
    profiles: dict[str, ModelProfile]  # label ("fp32", "quant") -> profile
    roofline: Roofline
    load_average: tuple[float, float, float]

    def ratio(self) -> float | None:
        """Quantized total time over FP32 total time, both measured in the same interleaved run."""
        if set(self.profiles) != {"fp32", "quant"}:
            return None
        return self.profiles["quant"].total_ms / self.profiles["fp32"].total_ms

    def to_dict(self) -> dict:
        out = {"roofline": self.roofline.to_dict(), "load_average": list(self.load_average),
               "ratio": self.ratio(), "models": {}}
        for label, prof in self.profiles.items():
            d = prof.to_dict()
            for row in d["op_types"] + d["nodes"]:
                row["roof_fraction"] = _roof_fraction(self.roofline, row)
                row["bound"] = _bound(self.roofline, row)
            out["models"][label] = d
        return out


def profile(model: str | os.PathLike | onnx.ModelProto,
            quant: str | os.PathLike | onnx.ModelProto | None = None, *, batch: int = 1,
            runs: int = 20, warmup: int = 3, threads: int = 2) -> ProfileReport:
    """Profile MODEL (and QUANT, interleaved with it) and measure the roofline."""
    for flag, value in (("batch", batch), ("runs", runs), ("threads", threads)):
        if value < 1:
            raise UsageError(f"--{flag} must be at least 1, got {value}")
    models = {"fp32": model} if quant is None else {"fp32": model, "quant": quant}
    profiles = profile_models(models, batch=batch, runs=runs, warmup=warmup, threads=threads)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return ProfileReport(profiles, measure_roofline(threads), tuple(load))


def _roof_fraction(roof: Roofline, row: dict) -> float | None:
    if not row["flops"] or not row["bytes"] or row["ms"] <= 0:
        return None
    return row["gflops_s"] / roof.ceiling(row["intensity"], row["int8"])


def _bound(roof: Roofline, row: dict) -> str:
    if not row["flops"] or not row["bytes"]:
        return "data" if row["bytes"] else "-"
    return "compute" if row["intensity"] >= roof.ridge(row["int8"]) else "memory"


def roofline_png(report: ProfileReport) -> bytes:
    """Log-log roofline: the fp32 and int8 ceilings (bandwidth slope, then flat peak) and one
    point per op type (with FLOPs) of each profiled model, sized by its share of the time."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import numpy as np
    from matplotlib import pyplot as plt

    roof = report.roofline
    fig, ax = plt.subplots(figsize=(9, 6), dpi=100)
    xs = np.logspace(-2, 4, 200)
    ax.plot(xs, [roof.ceiling(x, False) for x in xs], color="#1f77b4",
            label=f"fp32 ceiling ({roof.fp32_gflops:.0f} GFLOP/s)")
    ax.plot(xs, [roof.ceiling(x, True) for x in xs], color="#d62728",
            label=f"int8 ceiling ({roof.int8_gops:.0f} GOP/s)")
    ax.text(xs[0] * 1.5, roof.bandwidth_gbs * xs[0] * 2.2,
            f"memory {roof.bandwidth_gbs:.1f} GB/s", rotation=33, fontsize=8)
    markers = {"fp32": "o", "quant": "^"}
    for label, prof in report.profiles.items():
        rows = [r for r in prof.by_op_type() if r.flops and r.bytes and r.ms > 0]
        for r in rows:
            colour = "#d62728" if r.int8 else "#1f77b4"
            size = 20 + 600 * r.ms / max(prof.kernel_ms, 1e-9)
            ax.scatter(r.intensity, r.gflops_s, s=size, marker=markers.get(label, "s"),
                       facecolors="none" if label == "fp32" else colour, edgecolors=colour)
            ax.annotate(f"{r.op_type} ({label})", (r.intensity, r.gflops_s), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("achieved GFLOP/s (GOP/s for int8)")
    ax.set_title(f"roofline, {roof.threads} threads: ○ fp32 model, ▲ quantized; "
                 "red = int8 kernels")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def render_html(report: ProfileReport, top: int = 30) -> str:
    d = report.to_dict()
    png = base64.b64encode(roofline_png(report)).decode("ascii")
    roof = report.roofline
    parts = ["<!doctype html><meta charset='utf-8'><title>onnxvq profile</title>",
             "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:right}"
             "td:first-child{text-align:left}</style><h1>onnxvq profile</h1>",
             f"<p>roofline measured here: fp32 {roof.fp32_gflops:.1f} GFLOP/s, int8 "
             f"{roof.int8_gops:.1f} GOP/s, memory {roof.bandwidth_gbs:.1f} GB/s "
             f"({roof.threads} threads); load average "
             f"{' '.join(f'{v:.2f}' for v in report.load_average)}</p>"]
    if d["ratio"] is not None:
        parts.append(f"<p>quantized / FP32 time: <b>{d['ratio']:.3f}×</b> (same run, "
                     "interleaved)</p>")
    parts.append(f'<img alt="roofline" src="data:image/png;base64,{png}">')
    for label, m in d["models"].items():
        parts.append(f"<h2>{html.escape(label)}: {html.escape(m['model'])}, batch {m['batch']}, "
                     f"{m['total_ms']:.2f} ms per run (kernels {m['kernel_ms']:.2f})</h2>")
        parts.append(_table(m["op_types"], "op type", m["kernel_ms"]))
        parts.append(f"<h3>slowest {top} nodes</h3>")
        parts.append(_table(sorted(m["nodes"], key=lambda r: -r["ms"])[:top], "node",
                            m["kernel_ms"]))
    return "\n".join(parts)


def table_rows(rows: list[dict], total_ms: float) -> list[tuple[str, ...]]:
    """Rows for the text/HTML tables: label, time, share of `total_ms`, GFLOP, MB, FLOP/B,
    GFLOP/s, % of the roofline ceiling at that intensity, bound."""
    total = total_ms or 1.0
    out = []
    for r in rows:
        frac = r.get("roof_fraction")
        label = f"{r['name'][-48:]} ({r['op_type']})" if "name" in r else r["op_type"]
        out.append((label,
                    f"{r['ms']:.3f}", f"{100 * r['ms'] / total:.1f}", f"{r['flops'] / 1e9:.3f}",
                    f"{r['bytes'] / 1e6:.2f}", f"{r['intensity']:.2f}", f"{r['gflops_s']:.1f}",
                    "" if frac is None else f"{100 * frac:.0f}", r["bound"]))
    return out


HEADER = ("ms", "%", "GFLOP", "MB", "FLOP/B", "GFLOP/s", "% roof", "bound")


def _table(rows: list[dict], first: str, total_ms: float) -> str:
    head = "".join(f"<th>{h}</th>" for h in (first, *HEADER))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in table_rows(rows, total_ms))
    return f"<table><tr>{head}</tr>{body}</table>"
