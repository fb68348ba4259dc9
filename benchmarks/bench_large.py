"""A model over 2 GB through every stage: a ViT-H/14-sized ViT (depth 32, dim 1280, 16 heads,
MLP 5120, 224 px; 632 M parameters, 2.5 GB of FP32 weights in external data) quantized with
`--pts --lis` by the command line, then run in ONNX Runtime.

    python benchmarks/bench_large.py                  # builds the model once under /tmp
    python benchmarks/bench_large.py --cache DIR --calib-size 8

The model is `models/tiny_vit.py` at ViT-H/14 sizes with random weights (`save_tiny_vit` writes
the weights to the external data file as they are made; never in git). `onnxvq quantize` runs
under `/usr/bin/time -v` for its peak RSS; the output (external data beside it) is run in ORT on
random images and compared with the FP32 model on the same images. Calibration is data-free
(Gaussian noise; this measures that every stage works and what it costs, not accuracy).
The load average is printed with the figures. Results: `results/large.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from onnxvq.core.metrics import sqnr
from onnxvq.core.runtime import make_session
from onnxvq.models.tiny_vit import TinyViTConfig

VIT_H = TinyViTConfig(depth=32, dim=1280, heads=16, mlp_ratio=4, patch=14, image=224,
                      classes=1000)
RESULTS = Path(__file__).resolve().parent / "results" / "large.json"


def timed(cmd: list[str]) -> dict:
    """Run `cmd` under /usr/bin/time -v: wall seconds, peak RSS (GB), exit code, output tail."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    peak = round(int(rss[1]) / 2**20, 2) if rss else None
    return {"seconds": round(wall, 1), "peak_rss_gb": peak,
            "rc": proc.returncode, "tail": (proc.stdout + proc.stderr)[-1500:]}


def build(path: Path) -> dict:
    if path.is_file():
        return {"cached": True}
    code = ("from onnxvq.models.tiny_vit import TinyViTConfig, save_tiny_vit; "
            f"save_tiny_vit({VIT_H!r}, {str(path)!r})")
    return timed([sys.executable, "-c", code])


def run_in_ort(fp32: Path, quant: Path, batch: int) -> dict:
    """FP32 vs int8 on the same random images, one session at a time (memory)."""
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    outs, secs = [], []
    for p in (fp32, quant):
        sess = make_session(str(p))
        t0 = time.perf_counter()
        outs.append(sess.run(None, {sess.get_inputs()[0].name: x})[0].astype(np.float64))
        secs.append(round(time.perf_counter() - t0, 2))
        del sess
    a, b = outs
    cos = float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    return {"cosine": round(cos, 4), "sqnr_db": round(sqnr(a, b), 2),
            "fp32_run_s": secs[0], "int8_run_s": secs[1], "batch": batch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/onnxvq-large"))
    ap.add_argument("--calib-size", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()
    fp32, out = args.cache / "vit_h14.onnx", args.cache / "vit_h14.int8.onnx"
    load = [os.getloadavg()]
    made = build(fp32)
    data_gb = fp32.with_name(fp32.name + ".data").stat().st_size / 2**30
    cli = str(Path(sys.executable).with_name("onnxvq"))
    q = timed([cli, "quantize", str(fp32), "-o", str(out), "--pts", "--lis", "--calib-size",
               str(args.calib_size), "--batch-size", str(args.batch_size)])
    load.append(os.getloadavg())
    if q["rc"] != 0:
        raise SystemExit(f"quantize failed (exit {q['rc']}):\n{q['tail']}")
    ort_run = run_in_ort(fp32, out, batch=2)
    out_gb = sum(p.stat().st_size for p in out.parent.glob(out.name + "*")) / 2**30
    row = {"model": "ViT-H/14 size (depth 32, dim 1280)", "weights_gb": round(data_gb, 2),
           "build": {k: v for k, v in made.items() if k != "tail"},
           "quantize": {k: v for k, v in q.items() if k != "tail"}, "output_gb": round(out_gb, 2),
           "ort": ort_run, "load_average": [[round(x, 2) for x in la] for la in load],
           "rss_over_weights": round(q["peak_rss_gb"] / data_gb, 2)}
    print(f"{'weights':>8} {'quantize':>9} {'peak RSS':>9} {'x weights':>9} {'output':>7} "
          f"{'cosine':>7} {'SQNR':>6}")
    print(f"{data_gb:7.2f}G {q['seconds']:8.0f}s {q['peak_rss_gb']:8.2f}G "
          f"{row['rss_over_weights']:9.2f} {out_gb:6.2f}G {ort_run['cosine']:7.4f} "
          f"{ort_run['sqnr_db']:5.1f}dB")
    print(f"load average before {load[0]}, after quantize {load[1]}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(row, indent=1) + "\n")


if __name__ == "__main__":
    main()
