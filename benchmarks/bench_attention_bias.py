"""Attention with an additive bias (Swin-T's relative positions and shifted-window mask, ViT-relpos
small's relative positions): latency of onnxvq W8/A8 with the bias fused into QLinearAttention
against the same model with those attentions left unfused (what onnxvq wrote before the bias was
accepted), ONNX Runtime's quantize_static and NNCF, all in one process.

    python benchmarks/bench_attention_bias.py [--runs 20] [--threads 2] [--calib 32]
                                              [--models swin_t relpos_s] [--no-profile]

- Models: timm swin_tiny_patch4_window7_224 (the corpus export) and vit_relpos_small_patch16_224
  (exported here, seeded random weights, TorchScript opset 17, dynamic batch), calibrated on the
  same CIFAR-10 images resized to 224 (`imagenet` preset).
- "onnxvq W8/A8 unfused" is the same plain QDQ model lowered by ORT_LOWERING without
  fuse-qlinear-attention: on these models that is exactly the lowering before this change (every
  biased attention was refused).
- Latency: bench_quantize's interleaved runs (blocks of 5, median), batches 1 and 8, ratios to
  FP32's median in the same run; the 1-minute load average is stored with the figures.
- Breakdown: ORT's profiler per op type at batch 8 (`onnxvq.verify.profile`).
Results: tables on stdout, JSON in benchmarks/results/attention_bias.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).parent))
import bench_quantize  # noqa: E402
from bench_quantize import (  # noqa: E402
    console,
    interleaved_latency,
    op_type_table,
    quantize_nncf,
    quantize_ort,
    table,
)

from onnxvq.calibrate import resolve_preprocess  # noqa: E402
from onnxvq.core.config import QuantConfig  # noqa: E402

OUT = Path(__file__).parent / "results" / "attention_bias.json"
TIMM = {"swin_t": "swin_tiny_patch4_window7_224", "relpos_s": "vit_relpos_small_patch16_224"}


def fp32_path(name: str) -> Path:
    from onnxvq.models.corpus import corpus_dir, ensure_export

    if name == "swin_t":
        return ensure_export(TIMM[name], "torchscript17")
    path = corpus_dir() / f"bench_{TIMM[name]}.torchscript17.onnx"
    if not path.exists():
        import timm
        import torch

        torch.manual_seed(0)
        module = timm.create_model(TIMM[name], pretrained=False).eval()
        tmp = path.with_name(f".{path.name}.tmp")
        torch.onnx.export(module, (torch.randn(2, 3, 224, 224),), str(tmp), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        tmp.replace(path)
    return path


def build(name: str, tmp: Path, n: int) -> dict[str, Path]:
    import onnx

    from onnxvq.core.pipeline import Pipeline
    from onnxvq.passes.pipelines import ORT_LOWERING
    from onnxvq.quantizer.run import quantize

    fp32, calib, pre = fp32_path(name), bench_quantize.calib_dir(n, tmp), resolve_preprocess(
        "imagenet")
    paths = {"fp32": fp32}
    fused = quantize(str(fp32), calib, QuantConfig(calib_size=n), preprocess=pre)
    paths["onnxvq W8/A8 (bias fused)"] = fused.save(tmp / f"{name}_fused.onnx")
    plain = quantize(str(fp32), calib, QuantConfig(calib_size=n, ort_fusions=False),
                     preprocess=pre).model
    unfused, _ = Pipeline(tuple(p for p in ORT_LOWERING.passes
                                if p.id != "fuse-qlinear-attention")).run(plain, numeric="none")
    paths["onnxvq W8/A8 unfused"] = tmp / f"{name}_unfused.onnx"
    onnx.save(unfused, str(paths["onnxvq W8/A8 unfused"]))
    bench_quantize.model_path = lambda _name: fp32  # the comparators read the FP32 file by name
    paths["quantize_static"] = quantize_ort(name, "minmax", n, tmp / f"{name}_ort.onnx", tmp)
    try:
        paths["NNCF"] = quantize_nncf(name, "minmax", n, tmp / f"{name}_nncf.onnx", tmp)
    except Exception as exc:  # not installed, or NNCF fails on the model (vit_relpos: an
        # AssertionError in its SmoothQuant): the other tools' rows still count
        console.print(f"[yellow]NNCF skipped: {type(exc).__name__}: {exc}[/yellow]")
    return paths


def breakdown(paths: dict[str, Path], runs: int, threads: int) -> dict[str, dict]:
    from onnxvq.verify.profile import profile_models

    profs = profile_models(paths, batch=8, runs=runs, warmup=2, threads=threads)
    return {k: {"total_ms": p.total_ms,
                "op_types": {r.op_type: [r.ms, r.nodes] for r in p.by_op_type()}}
            for k, p in profs.items()}


def show(name: str, res: dict) -> None:
    lat = res["latency"]
    t = table(f"{TIMM[name]}: ms (× FP32), ORT CPU, median of interleaved runs, load "
              f"{res['loadavg_1min'][0]:.1f} → {res['loadavg_1min'][1]:.1f}", "model",
              "batch 1", "batch 8")
    for k in lat["1"]:
        t.add_row(k, *[f"{lat[b][k][0]:.1f} ({lat[b][k][0] / lat[b]['fp32'][0]:.3f}×)"
                       for b in ("1", "8")])
    console.print(t)
    bd = res.get("breakdown")
    if not bd:
        return
    console.print(op_type_table(f"{TIMM[name]} batch 8, ms per op type (ORT profiler)", bd,
                                0.5))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--models", nargs="+", choices=sorted(TIMM), default=sorted(TIMM)[::-1])
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    bench_quantize.prime_denormals()
    lat_args = SimpleNamespace(threads=args.threads, runs=args.runs, warmup=3)
    results = {}
    for name in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            paths = build(name, Path(tmp), args.calib)
            load0 = os.getloadavg()[0]
            res = {"runs": args.runs, "threads": args.threads, "calib_images": args.calib,
                   "latency": {str(b): interleaved_latency(name, paths, b, lat_args)
                               for b in (1, 8)}}
            if not args.no_profile:
                res["breakdown"] = breakdown(paths, max(5, args.runs // 2), args.threads)
            res["loadavg_1min"] = [load0, os.getloadavg()[0]]
        results[name] = res
        show(name, res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
