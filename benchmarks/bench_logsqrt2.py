"""log2 vs log-sqrt(2) LogIntSoftmax codes under `--recipe repq --lis` on the two CIFAR-10 models.

    python benchmarks/bench_logsqrt2.py [--models vit_cifar10,cct_cifar10] [--bits 66,44]
                                        [--bases none,2,sqrt2] [--val-limit N] [--threads 2]

For each model, W/A pair and base (`none`: the recipe without --lis, the attention's A.V a plain
QDQ MatMul; `qdq-2`, `qdq-sqrt2`: --lis-qdq, the log codes emulated in standard ops): quantize
(256 images of cifar10/calib), then top-1 on cifar10/val (2,000 images) and top-1 agreement with
FP32. RepQ-ViT's ablation (DeiT-S W4/A4): log2 67.71 -> log-sqrt(2) 69.03.
Results: a Markdown table on stdout, JSON in benchmarks/results/logsqrt2.json (merged per entry).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import onnx
from bench_lowbit import DATA, PRESETS, accuracy, load_val, logits, merge_results

from onnxvq.calibrate import resolve_preprocess
from onnxvq.core.config import QuantConfig
from onnxvq.core.runtime import make_session
from onnxvq.quantizer.run import quantize

OUT = Path(__file__).parent / "results" / "logsqrt2.json"


def config(w: int, a: int, base: str) -> QuantConfig:
    cfg = QuantConfig(recipe="repq", w_bits=w, a_bits=a)
    if base.startswith("qdq-"):
        return cfg.with_(lis_qdq=True, lis_base=base[4:])
    return cfg if base == "none" else cfg.with_(lis=True, lis_base=base)


def run_model(name: str, args) -> list[dict]:
    fp32 = onnx.load(DATA / "models" / f"{name}.onnx")
    prep = resolve_preprocess(PRESETS[name])
    x, y = load_val(PRESETS[name], args.val_limit)
    ref = logits(make_session(fp32, threads=args.threads), x)
    rows = []
    for pair in args.bits.split(","):
        w, a = int(pair[0]), int(pair[1])
        for base in args.bases.split(","):
            t0 = time.perf_counter()
            result = quantize(fp32, DATA / "cifar10" / "calib", config(w, a, base),
                              preprocess=prep)
            seconds = time.perf_counter() - t0
            z = logits(make_session(result.model, threads=args.threads), x)
            lis = sum(n.op_type == "LogIntSoftmax" for n in result.model.graph.node)
            row = {"model": name, "w_bits": w, "a_bits": a, "lis_base": base, "lis_nodes": lis,
                   **accuracy(z, ref, y),
                   "quantize_s": round(seconds, 1), "images": len(y),
                   "load": os.getloadavg()[0]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | W/A | LIS base | LogIntSoftmax nodes | FP32 top-1 | top-1 | agreement | "
             "load |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["model"], -r["w_bits"], -r["a_bits"], r["lis_base"])):
        base = {"none": "no --lis", "2": "2", "sqrt2": "√2", "qdq-2": "2, `--lis-qdq`",
                "qdq-sqrt2": "√2, `--lis-qdq`"}[r["lis_base"]]
        lines.append(f"| `{r['model']}` | W{r['w_bits']}/A{r['a_bits']} | {base} | "
                     f"{r['lis_nodes']} | {100 * r['fp32_top1']:.2f} | {100 * r['top1']:.2f} | "
                     f"{100 * r['agreement']:.2f} | {r['load']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_cifar10,cct_cifar10")
    parser.add_argument("--bits", default="66,44")
    parser.add_argument("--bases", default="none,2,sqrt2")
    parser.add_argument("--val-limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows = [r for m in args.models.split(",") for r in run_model(m, args)]
    print(markdown(merge_results(args.out, rows, ("model", "w_bits", "a_bits", "lis_base"))))


if __name__ == "__main__":
    main()
