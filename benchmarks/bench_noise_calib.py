"""Sparsebit's noise-calibration homework on the two shared ViTs: Gaussian noise vs real images.

    python benchmarks/bench_noise_calib.py [--methods minmax omse block-mse] [--bits 8 4]
                                           [--counts 1 10 100] [--limit 1000]

For each model, bit width (W=A) and method: calibrate on 1, 10, 100 samples of N(0, 1) noise (the
preprocessed tensor itself, as `quantize(..., calib=None)` does) and on 1, 10, 100 real images
(evenly strided over cifar10/calib, class balanced from 10 up), then top-1 on cifar10/val (`--limit`
images, class balanced). Then, to explain the gap, the per-site ranges: for each activation site,
the ratio of the noise-calibrated (100 samples) to the real-calibrated (100 images) min/max range
under minmax, summarised per role and block. JSON in benchmarks/results/noise_calib.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from onnxvq.calibrate.preprocess import resolve_preprocess
from onnxvq.core.config import QuantConfig
from onnxvq.quantizer.run import quantize
from onnxvq.verify.evaluate import evaluate

DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
OUT = Path(__file__).parent / "results" / "noise_calib.json"
REAL = {"cct_cifar10": "cifar10", "vit_cifar10": "cifar10-vit"}


def accuracy(model: str, method: str, bits: int, source: str, n: int, limit: int) -> dict:
    prep = resolve_preprocess(REAL[model])
    path = DATA / "models" / f"{model}.onnx"
    calib = None if source == "noise" else DATA / "cifar10" / "calib"
    cfg = QuantConfig(method=method, w_bits=bits, a_bits=bits, calib_size=n,
                      batch_size=min(16, n))
    t0 = time.perf_counter()
    result = quantize(path, calib, cfg, preprocess=prep)
    seconds = time.perf_counter() - t0
    ev = evaluate(result.model, DATA / "cifar10" / "val", prep, limit=limit)
    return {"model": model, "method": method, "bits": bits, "source": source, "n": n,
            "top1": ev.top1, "calib_seconds": round(seconds, 2), "load": os.getloadavg()[0]}


def range_ratios(model: str) -> list[dict]:
    """Per site: (noise range) / (real range), both minmax over 100 samples, W8/A8."""
    prep = resolve_preprocess(REAL[model])
    path = DATA / "models" / f"{model}.onnx"
    cfg = QuantConfig(method="minmax", calib_size=100)
    noise = quantize(path, None, cfg, preprocess=prep).activation_qparams
    result = quantize(path, DATA / "cifar10" / "calib", cfg, preprocess=prep)
    real = result.activation_qparams
    layer = {s.tensor: _layer(s.consumers[0]) for s in result.plan.activations}
    rows = []
    for t, q in real.items():
        lo, hi = q.range
        nlo, nhi = noise[t].range
        width, nwidth = hi - lo, nhi - nlo
        block = re.search(r"(?:blocks|layers)\.(\d+)", t)
        rows.append({"tensor": t, "role": f"{q.role} -> {layer[t]}",
                     "block": int(block.group(1)) if block else None,
                     "real": [lo, hi], "noise": [nlo, nhi],
                     "ratio": nwidth / width if width > 0 else None})
    return rows


def _layer(node: str) -> str:
    """The consumer's module name without its block prefix ('/blocks/blocks.0/mlp/mlp.3/MatMul'
    -> 'mlp.3', '/transformer/layers.1/self_attn/MatMul_1' -> 'self_attn/MatMul_1')."""
    parts = [p for p in node.split("/") if p and not re.fullmatch(r"(blocks|layers)\.\d+", p)
             and p not in ("blocks", "transformer")]
    if len(parts) >= 2 and re.fullmatch(r"(MatMul|Gemm|Conv)(_\d+)?", parts[-1]) and \
            not parts[-1].endswith(tuple("0123456789")):
        parts = parts[:-1]
    return "/".join(parts[-2:])


def summarise(rows: list[dict]) -> dict:
    groups = defaultdict(list)
    for r in rows:
        if r["ratio"] is not None:
            groups[f"{r['role']} (block {r['block']})" if r["block"] is not None
                   else f"{r['role']} (outside blocks)"].append(r["ratio"])
    return {k: round(float(np.median(v)), 3) for k, v in sorted(groups.items())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", nargs="+", default=["minmax", "omse", "block-mse"])
    ap.add_argument("--bits", type=int, nargs="+", default=[8, 4])
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--models", nargs="+", default=list(REAL))
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--only", choices=("accuracy", "ranges"))
    args = ap.parse_args()
    data = json.loads(OUT.read_text()) if OUT.exists() else {}
    OUT.parent.mkdir(exist_ok=True)
    if args.only in (None, "ranges"):
        for model in args.models:
            rows = range_ratios(model)
            data.setdefault("ranges", {})[model] = {"sites": rows, "median_ratio": summarise(rows)}
            print(model, json.dumps(summarise(rows), indent=1), flush=True)
            OUT.write_text(json.dumps(data, indent=1))
    if args.only in (None, "accuracy"):
        for model in args.models:
            for bits in args.bits:
                for method in args.methods:
                    for source in ("noise", "real"):
                        for n in args.counts:
                            row = accuracy(model, method, bits, source, n, args.limit)
                            key = tuple(row[k] for k in ("model", "method", "bits", "source", "n"))
                            data["accuracy"] = [r for r in data.get("accuracy", []) if tuple(
                                r[k] for k in ("model", "method", "bits", "source", "n")) != key]
                            data["accuracy"].append(row)
                            OUT.write_text(json.dumps(data, indent=1))
                            print(f"{model} W{bits}/A{bits} {method} {source} x{n}: "
                                  f"{row['top1']:.2%}", flush=True)


if __name__ == "__main__":
    main()
