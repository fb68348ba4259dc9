"""CNNs as Sparsebit's homework measures them (Q1: W8/A8 PTQ; Q4: int8 speed across batch sizes),
on ONNX Runtime's CPU provider instead of TensorRT.

    python benchmarks/bench_cnn.py                       # ResNet-18, MobileNetV2, VGG16-BN
    python benchmarks/bench_cnn.py --models tv_resnet18 --runs 10

Models: the torchvision corpus exports (`torchscript17`, random weights, BatchNorm statistics from
noise; made on first use, needs the [export] extra). Calibration: 64 CIFAR-10 images from
`../shared/data/cifar10/calib` resized to 224 (`imagenet` preset), minmax, W8/A8, target ort.
Fidelity: the logits of 64 `cifar10/val` images against FP32 (cosine, SQNR, top-1 agreement;
with random weights this measures the quantization error, not accuracy).
Latency: median of `--runs` timed runs per batch size, 2 intra-op threads; FP32 and int8 take
turns run by run (after one untimed run each), so load from other processes falls on both alike.
The load average is printed before and after. Results: `results/cnn.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from onnxvq.calibrate import batches, open_source, resolve_preprocess
from onnxvq.core.config import QuantConfig
from onnxvq.core.runtime import make_session, random_inputs
from onnxvq.models.corpus import CNN_ENTRIES, ensure_export
from onnxvq.quantizer.run import quantize
from onnxvq.verify.fidelity import fidelity

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10"
RESULTS = Path(__file__).resolve().parent / "results" / "cnn.json"


def interleaved_ms(fp32, int8, batch: int, runs: int) -> tuple[float, float]:
    """Median ms of FP32 and int8, timed alternately on the same random batch."""
    sessions = [make_session(m, threads=2) for m in (fp32, int8)]
    feeds = random_inputs(sessions[0], batch=batch)
    for s in sessions:
        s.run(None, feeds)
    times: list[list[float]] = [[], []]
    for _ in range(runs):
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            s.run(None, feeds)
            times[i].append(time.perf_counter() - t0)
    return float(np.median(times[0]) * 1e3), float(np.median(times[1]) * 1e3)


def bench_model(name: str, runs: int, batch_sizes: list[int]) -> dict:
    path = ensure_export(name, "torchscript17")
    prep = resolve_preprocess("imagenet")
    t0 = time.perf_counter()
    result = quantize(path, DATA / "calib", QuantConfig(calib_size=64, batch_size=16),
                      preprocess=prep)
    seconds = time.perf_counter() - t0
    val = open_source(DATA / "val", prep, 64, ["N", 3, 224, 224])
    fid = fidelity(str(path), result.model, batches(val, 16, "input"))
    row = {"model": name, "quantize_s": round(seconds, 1), "cosine": round(fid.cosine, 4),
           "sqnr_db": round(fid.sqnr_db, 2), "top1_agreement": fid.top1_agreement,
           "latency_ms": {}}
    print(f"{name}: cosine {fid.cosine:.4f}, SQNR {fid.sqnr_db:.2f} dB, top-1 agreement "
          f"{fid.top1_agreement:.3f}, quantized in {seconds:.0f} s", flush=True)
    for batch in batch_sizes:
        f, q = interleaved_ms(str(path), result.model, batch, runs)
        row["latency_ms"][batch] = {"fp32": round(f, 2), "int8": round(q, 2),
                                    "ratio": round(q / f, 3)}
        print(f"{name} batch {batch}: fp32 {f:.1f} ms, int8 {q:.1f} ms ({q / f:.2f}x)",
              flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(CNN_ENTRIES))
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--batch", type=int, nargs="*", default=[1, 8, 32])
    parser.add_argument("--no-latency", action="store_true", help="fidelity only")
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows = [bench_model(name, args.runs, [] if args.no_latency else args.batch)
            for name in args.models]
    if args.no_latency:
        return
    run = {"load_before": load_before, "load_after": os.getloadavg(), "runs": args.runs}
    print(json.dumps({**run, "rows": rows}, indent=1))
    # rows of models not benchmarked this time are kept; each row carries its run's load
    old = json.loads(RESULTS.read_text())["rows"] if RESULTS.exists() else []
    mine = {r["model"] for r in rows}
    merged = [r for r in old if r["model"] not in mine] + [{**r, **run} for r in rows]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": merged}, indent=1))


if __name__ == "__main__":
    main()
