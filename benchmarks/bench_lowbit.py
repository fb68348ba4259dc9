"""Low-bit accuracy of onnxvq on the two trained CIFAR-10 models, without and with a recipe.

    python benchmarks/bench_lowbit.py [--models vit_cifar10,cct_cifar10] [--bits 88,66,48,44]
                                      [--configs plain,repq,smooth] [--val-limit N] [--threads 2]

For each model and W/A bit pair: quantize (omse, 256 images of cifar10/calib) plainly and with each
recipe named in --configs (`--recipe repq`, `--recipe smooth`), then top-1 on cifar10/val (2,000
images) and top-1 agreement with FP32 (FP32 logits computed once per model), the file size and the
latency ratio to FP32 (batch 64, median of 5 runs each, the two models' runs interleaved so load
from other processes hits them alike; ORT CPU).
Results: a Markdown table on stdout, JSON in benchmarks/results/lowbit.json (merged per entry).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import onnx

from onnxvq.calibrate import batches, resolve_preprocess
from onnxvq.calibrate.data import ImageFolder
from onnxvq.core.config import RECIPES, QuantConfig
from onnxvq.core.runtime import make_session
from onnxvq.quantizer.run import quantize

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data").resolve()
OUT = Path(__file__).parent / "results" / "lowbit.json"
PRESETS = {"vit_cifar10": "cifar10-vit", "cct_cifar10": "cifar10"}


def logits(sess, x: np.ndarray, batch: int = 250) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0]
                           for i in range(0, len(x), batch)])


def load_val(preset: str, limit: int | None):
    source = ImageFolder(DATA / "cifar10" / "val", resolve_preprocess(preset), limit)
    xs = list(batches(source, 250, "input", with_labels=True))
    return (np.concatenate([f["input"] for f, _ in xs]), np.concatenate([y for _, y in xs]))


def accuracy(z: np.ndarray, ref: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Top-1 of the logits `z` and of FP32's `ref` on the labels `y`, and their top-1 agreement."""
    return {"fp32_top1": float((ref.argmax(1) == y).mean()),
            "top1": float((z.argmax(1) == y).mean()),
            "agreement": float((z.argmax(1) == ref.argmax(1)).mean())}


def merge_results(path: Path, rows: list[dict], key: tuple[str, ...], **extra) -> list[dict]:
    """`rows` merged into the JSON rows at `path` (a row replaces the old one with the same `key`
    fields, rows of entries not run this time are kept), written with `extra` beside them."""
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    merged = list({tuple(r[k] for k in key): r for r in [*old, *rows]}.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**extra, "rows": merged}, indent=1))
    return merged


def latency_ratio(fp32: onnx.ModelProto, q: onnx.ModelProto, x: np.ndarray, threads: int,
                  runs: int = 5) -> float:
    sessions = [make_session(m, threads=threads) for m in (fp32, q)]
    name = sessions[0].get_inputs()[0].name
    times: list[list[float]] = [[], []]
    for s in sessions:
        s.run(None, {name: x})
    for _ in range(runs):
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            s.run(None, {name: x})
            times[i].append(time.perf_counter() - t0)
    return float(np.median(times[1]) / np.median(times[0]))


def configs(w: int, a: int, kinds: list[str]) -> dict[str, QuantConfig]:
    """"plain" (omse) and every recipe name (`RECIPES`) on top of it."""
    base = QuantConfig(method="omse", w_bits=w, a_bits=a)
    return {k: base if k == "plain" else base.with_(recipe=k) for k in kinds}


def run_model(name: str, bits: list[str], args) -> list[dict]:
    path = DATA / "models" / f"{name}.onnx"
    fp32 = onnx.load(path)
    prep = resolve_preprocess(PRESETS[name])
    x, y = load_val(PRESETS[name], args.val_limit)
    ref = logits(make_session(fp32, threads=args.threads), x)
    rows = []
    for pair in bits:
        w, a = int(pair[0]), int(pair[1])
        for kind, cfg in configs(w, a, args.configs.split(",")).items():
            t0 = time.perf_counter()
            result = quantize(fp32, DATA / "cifar10" / "calib", cfg, preprocess=prep)
            seconds = time.perf_counter() - t0
            z = logits(make_session(result.model, threads=args.threads), x)
            row = {"model": name, "w_bits": w, "a_bits": a, "config": kind,
                   **accuracy(z, ref, y),
                   "size_ratio": result.model.ByteSize() / fp32.ByteSize(),
                   "latency_ratio": latency_ratio(fp32, result.model, x[:64], args.threads),
                   "quantize_s": round(seconds, 1), "images": len(y),
                   "load": os.getloadavg()[0]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | W/A | config | FP32 top-1 | top-1 | agreement | size ratio | "
             "latency ratio | load |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["model"], -r["w_bits"], -r["a_bits"], r["config"])):
        lines.append(f"| `{r['model']}` | W{r['w_bits']}/A{r['a_bits']} | {r['config']} | "
                     f"{100 * r['fp32_top1']:.2f} | {100 * r['top1']:.2f} | "
                     f"{100 * r['agreement']:.2f} | {r['size_ratio']:.2f} | "
                     f"{r['latency_ratio']:.2f} | {r['load']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_cifar10,cct_cifar10")
    parser.add_argument("--bits", default="88,66,48,44")
    parser.add_argument("--val-limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", default="plain,repq")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows = [r for m in args.models.split(",") for r in run_model(m, args.bits.split(","), args)]
    print(markdown(merge_results(args.out, rows, ("model", "w_bits", "a_bits", "config"),
                                 recipes=RECIPES)))


if __name__ == "__main__":
    main()
