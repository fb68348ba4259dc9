"""End-to-end ORT CPU latency of DeiT-S: FP32 vs W8/A8 vs --pts vs --pts --lis.

    python benchmarks/bench_fq.py [--threads 2] [--batches 1 8] [--runs 20] [--warmup 3]
                                  [--out benchmarks/results/fq.json]

The model is timm's vit_small_patch16_224 (random weights) exported by onnxvq.models.corpus.
Each quantized variant comes from `onnxvq.quantize` with noise calibration (16 images):
speed does not depend on calibration quality. PTS/LIS models run twice: with the native custom-op
library (libonnxvq_ort.so) and with their ONNX local functions inlined (`custom_ops=False`).
Median wall time of `session.run` after warm-up; ratios are against FP32 at the same batch. The
issue's target: the whole --pts --lis model (native) is faster than FP32.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
import onnxruntime as ort

from onnxvq.core.config import QuantConfig
from onnxvq.models.corpus import ensure_export
from onnxvq.plugins import native
from onnxvq.quantizer.run import quantize
from onnxvq.verify.fidelity import timed_runs

MODEL = "vit_small_patch16_224"
EXPORTER = "torchscript17"
SLOW_RUN_S = 1.0  # a variant slower than this per run gets at most SLOW_RUNS timed runs
SLOW_RUNS = 5


@dataclass(frozen=True)
class Row:
    variant: str
    backend: str  # "ort" (no custom ops in the graph), "native" or "functions"
    batch: int
    median_ms: float
    runs: int
    ratio_vs_fp32: float | None = None


def _variants(path: Path, calib_size: int) -> list[tuple[str, onnx.ModelProto]]:
    fp32 = onnx.load(str(path))
    out = [("fp32", fp32)]
    for name, pts, lis in (("w8a8", False, False), ("pts", True, False), ("pts+lis", True, True)):
        cfg = QuantConfig(pts=pts, lis=lis, calib_size=calib_size, batch_size=8)
        out.append((name, quantize(path, None, cfg).model))
    return out


def _time(model: onnx.ModelProto, custom_ops: bool, batch: int, threads: int, runs: int,
          warmup: int) -> tuple[float, int]:
    return timed_runs(model, batch=batch, threads=threads, runs=runs, warmup=warmup,
                      custom_ops=custom_ops, slow_s=SLOW_RUN_S, slow_runs=SLOW_RUNS)


def run(threads: int, batches: list[int], runs: int, warmup: int, calib_size: int) -> list[Row]:
    if native.ort_library_path(build=True) is None:
        raise SystemExit("bench_fq: the native library is not available (build it first)")
    variants = _variants(ensure_export(MODEL, EXPORTER), calib_size)
    rows: list[Row] = []
    for batch in batches:
        base = None
        for name, model in variants:
            backends = [("ort", True)] if name in ("fp32", "w8a8") else [
                ("native", True), ("functions", False)]
            for backend, custom_ops in backends:
                ms, n = _time(model, custom_ops, batch, threads, runs, warmup)
                base = ms if name == "fp32" else base
                rows.append(Row(name, backend, batch, ms, n, ms / base))
    return rows


def _table(rows: list[Row]) -> str:
    head = (f"{'variant':<10} {'backend':<10} {'batch':>5} {'median ms':>10} {'x fp32':>7} "
            f"{'runs':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.variant:<10} {r.backend:<10} {r.batch:>5} {r.median_ms:>10.2f} "
                     f"{r.ratio_vs_fp32:>7.2f} {r.runs:>5}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--calib-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fq.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows = run(args.threads, args.batches, args.runs, args.warmup, args.calib_size)
    load_after = os.getloadavg()
    print(_table(rows))
    print(f"load average (1/5/15 min) before: {load_before}, after: {load_after}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": MODEL,
        "exporter": EXPORTER,
        "onnxruntime": ort.__version__,
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "calib_size": args.calib_size,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "results": [asdict(r) for r in rows],
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
