"""TensorRT latency of a DeiT-S in FP16 against its onnxvq INT8 model, at batch 1, 8 and 64.

    python benchmarks/bench_trt.py --float deit_s.onnx --int8 deit_s_onnxvq.onnx \
        [--batches 1 8 64] [--iters 200] [--json bench_trt.json]

TensorRT 11 networks are strongly typed, so FP16 comes from the model: the float ONNX is converted
to float16 tensors (I/O stay float32) with onnxruntime's converter before building. The INT8 model
is built as it is (explicit Q/DQ plus onnxvq's plugins). Latency is the median GPU time of one
``execute_async`` on device-resident inputs, measured by Polygraphy's TrtRunner.
Needs tensorrt and an NVIDIA GPU; without them it exits with status 2 and says why.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--float", dest="float_model", type=Path, required=True)
    parser.add_argument("--int8", dest="int8_model", type=Path, required=True)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--json", type=Path, default=Path("bench_trt.json"))
    return parser.parse_args(argv)


def to_fp16(src: Path, dst: Path) -> Path:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return dst


def latency_ms(engine_path: Path, batch: int, iters: int, warmup: int) -> dict[str, float]:
    from polygraphy import cuda
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    with TrtRunner(EngineFromBytes(engine_path.read_bytes())) as runner:
        feeds = {}
        for name, meta in runner.get_input_metadata(use_numpy_dtypes=False).items():
            shape = [batch if (not isinstance(d, int) or d < 0) else d for d in meta.shape]
            host = np.random.default_rng(0).standard_normal(shape).astype(meta.dtype.numpy())
            feeds[name] = cuda.DeviceArray(shape=tuple(shape), dtype=host.dtype).copy_from(host)
        times = []
        for i in range(warmup + iters):
            runner.infer(feeds, copy_outputs_to_host=False)
            if i >= warmup:
                times.append(runner.last_inference_time() * 1e3)
    t = np.asarray(times)
    return {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)),
            "images_per_s": float(batch * 1e3 / np.median(t))}


def run(args: argparse.Namespace) -> list[dict]:
    from onnxvq.verify.trt import EngineConfig, build_engine

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-trt-") as tmp:
        models = {"fp16": to_fp16(args.float_model, Path(tmp) / "fp16.onnx"),
                  "onnxvq-int8": args.int8_model}
        config = EngineConfig(min_batch=min(args.batches), opt_batch=max(args.batches),
                              max_batch=max(args.batches))
        for precision, model in models.items():
            report = build_engine(model, Path(tmp) / f"{precision}.engine", config=config)
            for batch in args.batches:
                stats = latency_ms(report.engine_path, batch, args.iters, args.warmup)
                rows.append({"precision": precision, "batch": batch,
                             "engine_mb": report.size_bytes / 2**20,
                             "plugins": len(report.plugins), **stats})
    return rows


def table(rows: list[dict]) -> str:
    head = f"{'precision':<12} {'batch':>5} {'median ms':>10} {'p90 ms':>8} {'img/s':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['precision']:<12} {r['batch']:>5} {r['median_ms']:>10.3f} "
                     f"{r['p90_ms']:>8.3f} {r['images_per_s']:>9.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from onnxvq.verify.trt import unavailable_reason

    args = parse_args(argv)
    reason = unavailable_reason()
    if reason is not None:
        print(f"bench_trt: cannot run: {reason}", file=sys.stderr)
        return 2
    for path in (args.float_model, args.int8_model):
        if not path.is_file():
            print(f"bench_trt: {path}: no such file", file=sys.stderr)
            return 2
    rows = run(args)
    print(table(rows))
    args.json.write_text(json.dumps({"rows": rows, "float": str(args.float_model),
                                     "int8": str(args.int8_model)}, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
