"""W8/A8 latency of a dynamo export against its TorchScript twin, and the dynamo export quantized
without the canonical passes that write dynamo's attention as TorchScript's (what onnxvq wrote
before session 8: no fused attention), all in one process.

    python benchmarks/bench_dynamo.py [--model deit_tiny_patch16_224] [--runs 40] [--threads 2]

- Models: the corpus exports `<model>.torchscript17.onnx` and `<model>.dynamo.onnx` (opset 20,
  `python -m onnxvq.models.export`), quantized W8/A8 on 16 noise samples (latency does not
  depend on the calibration data).
- "before": the same quantize() with fold-reshaped-transpose, compose-key-transpose,
  unbind-slices-to-split, remove-zero-attention-mask and remove-identity-cast taken out of the
  canonical pipeline.
- Latency: every session made with spinning off (`core.runtime.make_session(spin=False)`), run in
  turn on the same random batch, median of `--runs`; ratios to each export's own FP32 in the same
  run; the 1-minute load average before and after is stored with the figures.
Results: a table on stdout, JSON in benchmarks/results/dynamo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

import onnxvq.passes.pipelines as pipelines
from onnxvq.core.config import QuantConfig
from onnxvq.core.pipeline import Pipeline
from onnxvq.core.runtime import make_session
from onnxvq.models.corpus import ensure_export
from onnxvq.quantizer.run import quantize

DYNAMO_PASSES = ("fold-reshaped-transpose", "compose-key-transpose", "unbind-slices-to-split",
                 "remove-zero-attention-mask", "remove-identity-cast")
RESULTS = Path(__file__).parent / "results" / "dynamo.json"


def models(name: str, tmp: Path) -> dict[str, Path]:
    ts, dy = ensure_export(name, "torchscript17"), ensure_export(name, "dynamo")
    cfg = QuantConfig(calib_size=16, batch_size=8)
    paths = {"fp32 TorchScript": ts, "fp32 dynamo": dy}
    paths["W8/A8 TorchScript"] = quantize(str(ts), None, cfg).save(tmp / "ts.onnx")
    paths["W8/A8 dynamo"] = quantize(str(dy), None, cfg).save(tmp / "dynamo.onnx")
    after = pipelines.CANONICAL
    pipelines.CANONICAL = Pipeline(tuple(p for p in after.passes if p.id not in DYNAMO_PASSES),
                                   infer_shapes=True)
    try:
        paths["W8/A8 dynamo before"] = quantize(str(dy), None, cfg).save(tmp / "before.onnx")
    finally:
        pipelines.CANONICAL = after
    return paths


def latency(paths: dict[str, Path], batch: int, runs: int, threads: int, image: int):
    sessions = {k: make_session(p, threads=threads, spin=False) for k, p in paths.items()}
    x = np.random.default_rng(0).standard_normal((batch, 3, image, image)).astype(np.float32)
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for i in range(runs + 3):  # three warm-up rounds
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feeds[k])
            if i >= 3:
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_tiny_patch16_224")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    res = {"model": args.model, "runs": args.runs, "threads": args.threads,
           "load_before": os.getloadavg()[0], "latency_ms": {}}
    with tempfile.TemporaryDirectory() as tmp:
        paths = models(args.model, Path(tmp))
        for batch in (1, 8):
            med = latency(paths, batch, args.runs, args.threads, 224)
            res["latency_ms"][str(batch)] = med
            ts, dy = med["fp32 TorchScript"], med["fp32 dynamo"]
            print(f"batch {batch}: W8/A8 / FP32  TorchScript {med['W8/A8 TorchScript'] / ts:.3f}x"
                  f"  dynamo {med['W8/A8 dynamo'] / dy:.3f}x  dynamo before "
                  f"{med['W8/A8 dynamo before'] / dy:.3f}x  ("
                  + ", ".join(f"{k} {v:.1f} ms" for k, v in med.items()) + ")", flush=True)
    res["load_after"] = os.getloadavg()[0]
    RESULTS.write_text(json.dumps(res, indent=1) + "\n")
    print(f"load average {res['load_before']:.1f} -> {res['load_after']:.1f}; {RESULTS}")


if __name__ == "__main__":
    main()
