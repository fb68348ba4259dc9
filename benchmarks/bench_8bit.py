"""W8/A8 against NNCF on the two trained CIFAR-10 models, in one run, on the same images.

    python benchmarks/bench_8bit.py [--models vit_cifar10,cct_cifar10] [--configs default,smooth]
                                    [--val-limit N] [--threads 2] [--no-nncf]

Per model: FP32; NNCF 3.x `nncf.quantize(model_type=TRANSFORMER)` (its transformer preset:
SmoothQuant + fast bias correction; the `[bench]` extra, skipped with a note when absent);
onnxvq's default W8/A8 and the named 8-bit configs (`CONFIGS`). Calibration: the same 256 images
of cifar10/calib for every quantizer (onnxvq's strided subsample, handed to NNCF one image per
item); evaluation: cifar10/val (2,000 images). Printed per row: top-1, top-1 agreement with FP32,
and the per-image Pearson correlation of the logits with FP32's (mean / min), the quantity the
issue's ViT-S figures give. Results: a Markdown table on stdout, JSON in
benchmarks/results/8bit.json (merged per model and config).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))
from bench_lowbit import DATA, PRESETS, accuracy, load_val, logits, merge_results  # noqa: E402

from onnxvq.calibrate import batches, resolve_preprocess  # noqa: E402
from onnxvq.core.config import QuantConfig  # noqa: E402
from onnxvq.core.runtime import make_session  # noqa: E402
from onnxvq.quantizer.run import calibration_spec, quantize  # noqa: E402

OUT = Path(__file__).parent / "results" / "8bit.json"
CALIB = DATA / "cifar10" / "calib"
CONFIGS = {
    "default": {},
    "omse": {"method": "omse"},
    "bias-correction": {"bias_correction": True},
    "smooth": {"recipe": "smooth"},
    "repq": {"recipe": "repq"},
    "trt": {"target": "trt"},
    "trt-smooth": {"target": "trt", "recipe": "smooth"},
    "trt-repq": {"target": "trt", "recipe": "repq"},
}


def correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row Pearson correlation of two [N, K] logit arrays."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-30)


def quantize_nncf(fp32: onnx.ModelProto, preset: str, samples: int) -> onnx.ModelProto:
    import nncf

    spec = calibration_spec(str(CALIB), QuantConfig(calib_size=samples), resolve_preprocess(preset))
    source = spec.open(fp32)  # the images onnxvq's quantize calibrates on
    items = list(batches(source, 1, fp32.graph.input[0].name))  # subset_size counts items
    return nncf.quantize(fp32, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=len(items))


def measure(label: str, model: onnx.ModelProto, x, y, ref, threads: int) -> dict:
    z = logits(make_session(model, threads=threads), x)
    corr = correlation(z.astype(np.float64), ref.astype(np.float64))
    return {"config": label, **accuracy(z, ref, y), "corr_mean": float(corr.mean()),
            "corr_min": float(corr.min())}


def run_model(name: str, args) -> list[dict]:
    fp32 = onnx.load(DATA / "models" / f"{name}.onnx")
    preset = PRESETS[name]
    x, y = load_val(preset, args.val_limit)
    ref = logits(make_session(fp32, threads=args.threads), x)
    built: dict[str, tuple[onnx.ModelProto, float]] = {"fp32": (fp32, 0.0)}
    if not args.no_nncf:
        try:
            t0 = time.perf_counter()
            built["nncf"] = (quantize_nncf(fp32, preset, args.samples), time.perf_counter() - t0)
        except ImportError as exc:
            print(f"NNCF skipped: {exc}", file=sys.stderr)
    for label in args.configs.split(","):
        cfg = QuantConfig(calib_size=args.samples, **CONFIGS[label])
        t0 = time.perf_counter()
        result = quantize(fp32, CALIB, cfg, preprocess=resolve_preprocess(preset))
        built[f"onnxvq {label}"] = (result.model, time.perf_counter() - t0)
    rows = []
    for label, (model, seconds) in built.items():
        row = {"model": name, **measure(label, model, x, y, ref, args.threads),
               "quantize_s": round(seconds, 1), "images": len(y), "load": os.getloadavg()[0]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | quantizer | top-1 | agreement | corr mean | corr min | load |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| `{r['model']}` | {r['config']} | {100 * r['top1']:.2f} | "
                     f"{100 * r['agreement']:.2f} | {r['corr_mean']:.4f} | {r['corr_min']:.4f} | "
                     f"{r['load']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_cifar10,cct_cifar10")
    parser.add_argument("--configs", default="default,smooth")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--val-limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-nncf", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows = [r for m in args.models.split(",") for r in run_model(m, args)]
    merged = merge_results(args.out, rows, ("model", "config"), configs=CONFIGS)
    print(markdown(sorted(merged, key=lambda r: (r["model"], r["config"]))))


if __name__ == "__main__":
    main()
