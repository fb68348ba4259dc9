"""Real 4-bit storage: file size and ORT CPU latency of W8/A8, W4/A8 and weight-only W4 on ViT-S.

    python benchmarks/bench_int4.py [--model .corpus/vit_small_patch16_224.torchscript17.onnx]
                                    [--configs w8a8,w4a8,w4-weight-only] [--batch 4] [--runs 7]
                                    [--calib DIR] [--threads 2]

The model defaults to the corpus export of timm's vit_small_patch16_224 (DeiT-S's architecture:
dim 384, depth 12, 6 heads; untrained weights: size and speed only). Calibration: `--calib`
images (imagenet preset) or, without it, 16 noise samples. Each config is quantized once; the
sessions' runs are interleaved (median of `--runs`) so load from other processes hits all alike.
Output correlation with FP32 is the mean over the batch's images. JSON in results/int4.json.

    python benchmarks/bench_int4.py --cifar [--val-limit N]

instead measures weight-only int4 (max, gptq, `--recipe repq`) against W4/A8 `--recipe repq` on
the two trained CIFAR-10 models of ../shared/data (256 calibration images, 2,000 val images): top-1,
top-1 agreement with FP32 and the per-image correlation of the logits with FP32 (mean and min).
JSON in results/int4_cifar.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import onnx

from onnxvq.core.config import QuantConfig
from onnxvq.core.runtime import make_session
from onnxvq.quantizer.run import quantize

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "results" / "int4.json"
VITS = "vit_small_patch16_224.torchscript17.onnx"
CONFIGS = {"w8a8": {}, "w4a8": {"w_bits": 4}, "w4a8-repq": {"w_bits": 4, "recipe": "repq"},
           "w4-weight-only": {"w_bits": 4, "weight_only": True}}


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([np.corrcoef(x.ravel(), y.ravel())[0, 1]
                          for x, y in zip(a, b, strict=True)]))


CIFAR = {"wo4-max": {"weight_only": True, "w_bits": 4},
         "wo4-gptq": {"weight_only": True, "w_bits": 4, "weight_method": "gptq"},
         "wo4-repq": {"weight_only": True, "w_bits": 4, "recipe": "repq"},
         "w4a8-repq": {"w_bits": 4, "recipe": "repq"}}


def cifar(limit: int | None) -> None:
    from bench_lowbit import DATA, PRESETS, accuracy, load_val, logits

    from onnxvq.calibrate import resolve_preprocess

    rows = []
    for name, preset in PRESETS.items():
        path = DATA / "models" / f"{name}.onnx"
        x, y = load_val(preset, limit)
        ref = logits(make_session(onnx.load(path), threads=2), x)
        for kind, flags in CIFAR.items():
            result = quantize(path, DATA / "cifar10" / "calib", QuantConfig(**flags),
                              preprocess=resolve_preprocess(preset))
            z = logits(make_session(result.model, threads=2), x)
            c = [np.corrcoef(a, b)[0, 1] for a, b in zip(ref, z, strict=True)]
            rows.append({"model": name, "config": kind, **accuracy(z, ref, y),
                         "corr_mean": float(np.mean(c)), "corr_min": float(np.min(c)),
                         "bytes": len(result.model.SerializeToString()), "images": len(y)})
            print(json.dumps(rows[-1]), flush=True)
    print("| model | config | FP32 top-1 | top-1 | agreement | corr mean | corr min | KB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| `{r['model']}` | {r['config']} | {100 * r['fp32_top1']:.2f} | "
              f"{100 * r['top1']:.2f} | {100 * r['agreement']:.2f} | {r['corr_mean']:.4f} | "
              f"{r['corr_min']:.4f} | {r['bytes'] / 1e3:.0f} |")
    print("load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    (OUT.parent / "int4_cifar.json").write_text(json.dumps({"rows": rows}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cifar", action="store_true")
    ap.add_argument("--val-limit", type=int, default=None)
    ap.add_argument("--model", default=str(ROOT / ".corpus" / VITS))
    ap.add_argument("--configs", default="w8a8,w4a8,w4-weight-only")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib", default=None)
    args = ap.parse_args()
    if args.cifar:
        return cifar(args.val_limit)
    fp32 = onnx.load(args.model)
    models = {"fp32": fp32}
    for name in args.configs.split(","):
        cfg = QuantConfig(calib_size=16, batch_size=4, **CONFIGS[name])
        models[name] = quantize(fp32, args.calib, cfg).model
    sessions = {k: make_session(m, threads=args.threads) for k, m in models.items()}
    inp = sessions["fp32"].get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((args.batch, 3, 224, 224)).astype(np.float32)
    outs = {k: s.run(None, {inp: x})[0] for k, s in sessions.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(args.runs):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, {inp: x})
            times[k].append(time.perf_counter() - t0)
    load = os.getloadavg()
    ref = "w8a8" if "w8a8" in times else "fp32"
    rows = {}
    for k, m in models.items():
        ms = float(np.median(times[k]) * 1e3)
        size = len(m.SerializeToString())
        rows[k] = {"bytes": size, "size_ratio": size / len(fp32.SerializeToString()),
                   "latency_ms": ms, "latency_vs_" + ref: ms / (np.median(times[ref]) * 1e3),
                   "corr_fp32": corr(outs["fp32"], outs[k])}
    print(f"| model | file MB | × FP32 | latency ms (batch {args.batch}) | × {ref} | corr FP32 |")
    print("|---|---:|---:|---:|---:|---:|")
    for k, r in rows.items():
        print(f"| {k} | {r['bytes'] / 1e6:.2f} | {r['size_ratio']:.3f} | {r['latency_ms']:.0f} | "
              f"{r['latency_vs_' + ref]:.2f} | {r['corr_fp32']:.4f} |")
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"model": Path(args.model).name, "batch": args.batch,
                               "load": load, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
