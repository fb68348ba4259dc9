"""Search calibrators (block-mse, similarity, twin) against OMSE: accuracy and calibration cost.

    python benchmarks/bench_search.py [--only accuracy|cost] [--bits 6 4] [--methods ...]

A method `NAME+fisher` runs NAME with `fisher=True` (Fisher-weighted metric).

- accuracy: both shared CIFAR-10 models, 256 images of cifar10/calib, top-1 on the 2,000 images of
  cifar10/val and top-1 agreement with FP32, at each W/A bit width, per method.
- cost: 256 calibration images on DeiT-S (timm vit_small_patch16_224: DeiT-S's architecture,
  random weights; CIFAR-10 images resized to 224 with the `imagenet` preset): wall time of the
  quantize call and peak RSS (`VmHWM` of a fresh subprocess per method).
Every run is its own subprocess (peak RSS is per run), timed in wall and in CPU seconds (user +
system of all its threads: on a shared machine the wall time mostly measures the others'
load); rows are merged into
benchmarks/results/search.json as they finish, with the load average at the time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data").resolve()
OUT = Path(__file__).parent / "results" / "search.json"
REAL = {"cct_cifar10": "cifar10", "vit_cifar10": "cifar10-vit"}
METHODS = ("omse", "block-mse", "similarity", "twin")


def vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def model_path(name: str) -> Path:
    if name in REAL:
        return DATA / "models" / f"{name}.onnx"
    from onnxvq.models.corpus import ensure_export

    return ensure_export("vit_small_patch16_224", "torchscript17")


def worker(spec: str) -> None:
    """One quantization (and, for the CIFAR models, one evaluation); prints a JSON line."""
    from onnxvq.calibrate.preprocess import resolve_preprocess
    from onnxvq.core.config import QuantConfig
    from onnxvq.quantizer.run import quantize
    from onnxvq.verify.evaluate import evaluate

    job = json.loads(spec)
    prep = resolve_preprocess(REAL.get(job["model"], "imagenet"))
    method, _, option = job["method"].partition("+")  # "twin+fisher": fisher=True
    cfg = QuantConfig(method=method, w_bits=job["bits"], a_bits=job["bits"],
                      calib_size=job.get("calib", 256), fisher=option == "fisher")
    path = model_path(job["model"])
    t0 = time.perf_counter()
    cpu0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    result = quantize(path, job.get("data", str(DATA / "cifar10" / "calib")), cfg,
                      preprocess=prep)
    use = resource.getrusage(resource.RUSAGE_SELF)  # every ORT thread of this process
    row = {**job, "seconds": round(time.perf_counter() - t0, 2),
           "cpu_seconds": round(use.ru_utime + use.ru_stime - cpu0, 1),
           "search_seconds": result.calibration.get("search", {}).get("search_seconds"),
           "peak_rss_mb": round(vm_kib("VmHWM") / 1024, 1), "load": os.getloadavg()[0]}
    if job.get("evaluate", True):
        ev = evaluate(result.model, DATA / "cifar10" / "val", prep, ref=path)
        row.update(top1=ev.top1, agreement=ev.agreement, fp32_top1=ev.ref_top1)
    print(json.dumps(row))


def run(job: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--_worker", json.dumps(job)],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{job}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def merge(section: str, row: dict) -> None:
    data = json.loads(OUT.read_text()) if OUT.exists() else {}
    key = {k: row[k] for k in ("model", "method", "bits")}
    rows = [r for r in data.get(section, []) if {k: r[k] for k in key} != key]
    data[section] = [*rows, row]
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(data, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=("accuracy", "cost"))
    ap.add_argument("--bits", type=int, nargs="+", default=[6, 4])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--models", nargs="+", default=list(REAL))
    ap.add_argument("--_worker")
    args = ap.parse_args()
    if args._worker:
        return worker(args._worker)
    if args.only in (None, "accuracy"):
        for model in args.models:
            for bits in args.bits:
                for method in args.methods:
                    row = run({"model": model, "method": method, "bits": bits})
                    merge("accuracy", row)
                    print(f"{model} W{bits}/A{bits} {method}: top-1 {row['top1']:.2%} "
                          f"(calib {row['seconds']} s, load {row['load']:.1f})", flush=True)
    if args.only in (None, "cost"):
        for method in args.methods:
            row = run({"model": "deit_s", "method": method, "bits": 8, "evaluate": False})
            merge("cost", row)
            print(f"DeiT-S 256 images {method}: {row['seconds']} s, peak RSS "
                  f"{row['peak_rss_mb']} MB (load {row['load']:.1f})", flush=True)


if __name__ == "__main__":
    main()
