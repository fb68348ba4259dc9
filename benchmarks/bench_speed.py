"""DeiT-S inference speed: onnxvq (W8/A8, --pts --lis, and plain QDQ without the ORT lowering)
against ONNX Runtime's quantize_static and, when installed, NNCF, all in one process.

    python benchmarks/bench_speed.py [--runs 20] [--threads 2] [--calib 64] [--no-profile]

- Models: timm vit_small_patch16_224 (random weights, TorchScript opset 17 corpus export),
  calibrated on the same CIFAR-10 images resized to 224 (`imagenet` preset): onnxvq's `quantize`;
  quantize_static (QDQ, per-channel, MinMax, uint8/int8, as `bench_quantize.py`); NNCF's
  `nncf.quantize(..., model_type=TRANSFORMER)` (the `[bench]` extra; skipped with a note when
  absent).
- Latency: every model's session runs in turn, one run each, `--runs` rounds (median), after a
  warmup, at batch 1 and 8 on real images; ratios are to FP32's median in the same run. The
  1-minute load average is printed and stored with the figures.
- Breakdown: `onnxvq.verify.profile` (ORT's profiler, runs interleaved) per op type at batch 8.
Results: tables on stdout, JSON in benchmarks/results/speed.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_quantize import (  # noqa: E402
    DATA,
    console,
    model_path,
    op_type_table,
    prime_denormals,
    quantize_nncf,
    quantize_ort,
    real_batch,
    table,
)

from onnxvq.calibrate import resolve_preprocess  # noqa: E402
from onnxvq.core.config import QuantConfig  # noqa: E402
from onnxvq.core.runtime import make_session  # noqa: E402

OUT = Path(__file__).parent / "results" / "speed.json"
CALIB = DATA / "cifar10" / "calib"


def build(tmp: Path, n: int) -> tuple[dict[str, Path], list[str]]:
    from onnxvq.quantizer.run import quantize

    fp32 = model_path("deit_s")
    pre = resolve_preprocess("imagenet")
    paths, notes = {"fp32": fp32}, []
    for label, cfg in (("onnxvq W8/A8", QuantConfig(calib_size=n)),
                       ("onnxvq --pts --lis", QuantConfig(calib_size=n, pts=True, lis=True)),
                       ("onnxvq plain QDQ", QuantConfig(calib_size=n, ort_fusions=False))):
        t0 = time.perf_counter()
        result = quantize(str(fp32), CALIB, cfg, preprocess=pre)
        paths[label] = result.save(tmp / f"{len(paths)}.onnx")
        console.log(f"{label}: {time.perf_counter() - t0:.1f} s")
    paths["quantize_static"] = quantize_ort("deit_s", "minmax", n, tmp / "ort.onnx", tmp)
    try:
        paths["NNCF"] = quantize_nncf("deit_s", "minmax", n, tmp / "nncf.onnx", tmp)
    except ImportError as exc:
        notes.append(f"NNCF skipped: {exc}")
    return paths, notes


def latency(paths: dict[str, Path], batch: int, runs: int, threads: int) -> dict[str, float]:
    # Six sessions take turns in one process. With ORT's default spinning, the pool threads of
    # the session that just ran keep spinning on the 2 cores while the next one runs, so each
    # model's time depended on which model ran before it (measured at batch 1: W8/A8 43.9 and
    # --pts --lis 55.4 ms in one order, 50.2 and 36.3 in the other, 15.0 and 13.4 alone).
    # Spinning off for every session removes that order effect; the same setting for all tools.
    sessions = {k: make_session(p, threads=threads, spin=False) for k, p in paths.items()}
    x = real_batch(sessions["fp32"], "deit_s", batch)
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    for k, s in sessions.items():
        for _ in range(3):
            s.run(None, feeds[k])
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(runs):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feeds[k])
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def breakdown(paths: dict[str, Path], runs: int, threads: int) -> dict[str, dict]:
    from onnxvq.verify.profile import profile_models

    profs = profile_models(paths, batch=8, runs=runs, warmup=2, threads=threads)
    return {k: {"total_ms": p.total_ms,
                "op_types": {r.op_type: [r.ms, r.nodes] for r in p.by_op_type()}}
            for k, p in profs.items()}


def show(res: dict) -> None:
    labels = [k for k in res["latency"]["1"] if k != "fp32"]
    t = table(f"DeiT-S latency / FP32, ORT CPU {res['threads']} threads, median of "
              f"{res['runs']} interleaved runs", "model", *[f"batch {b}" for b in (1, 8)])
    for k in labels:
        t.add_row(k, *[f"{res['latency'][b][k] / res['latency'][b]['fp32']:.3f}×"
                       for b in ("1", "8")])
    console.print(t)
    if "breakdown" not in res:
        return
    console.print(op_type_table("batch 8, ms per op type (ORT profiler, runs interleaved)",
                                res["breakdown"], 0.2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    prime_denormals()
    with tempfile.TemporaryDirectory() as tmp:
        paths, notes = build(Path(tmp), args.calib)
        load0 = os.getloadavg()[0]
        res = {"runs": args.runs, "threads": args.threads, "calib_images": args.calib,
               "notes": notes, "latency": {str(b): latency(paths, b, args.runs, args.threads)
                                           for b in (1, 8)}}
        if not args.no_profile:
            res["breakdown"] = breakdown(paths, max(5, args.runs // 2), args.threads)
    res["loadavg_1min"] = [load0, os.getloadavg()[0]]
    show(res)
    for note in notes:
        console.print(f"[yellow]{note}[/yellow]")
    console.print(f"1-min load average {load0:.2f} -> {os.getloadavg()[0]:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
