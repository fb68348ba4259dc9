"""Time the QuantizedLinear kernels on the DeiT-S Linear shapes, every path side by side.

    python benchmarks/bench_linear.py [--runs 30] [--rounds 3] [--loops] [--out PATH.json]

For each shape (M = 197 and 1576 rows: batch 1 and 8; QKV, proj, fc1, fc2) four single-node
models of the same layer run: `QuantizedLinear` on its AMX tile path (where the CPU has AMX),
the same node with ONNXVQ_NO_AMX=1 (its fallback: ORT's MatMulIntegerToFloat kernel through
InvokeOp), with ONNXVQ_NO_AMX=avx2 (the exact AVX2 int16 panels, avx2_gemm.h), with
ONNXVQ_NO_AMX=loops (`--loops`: the plain loops, slow), and a plain com.microsoft
MatMulIntegerToFloat model without onnxvq's library (what ORT runs when the lowering is off),
the same with uint8 weights + 128 (`plain_u8`: MLAS's exact U8U8 kernel, what onnxvq writes on a
CPU whose U8S8 kernel saturates, passes/ort_unsigned_weights.py), the FP32 layer (`fp32`: MatMul
+ bias, the ceiling the int8 paths are measured against), plus `QuantizedLinearGeluQuantize`
(fc1's fused form) on the AMX path. The
switch is read once per process, so each path runs in its own process; `--rounds` rounds of all
paths alternate so a change in the machine's load hits them alike. Wall time of `session.run`,
the minimum and the median over all runs, 2 threads; `--cpu-time` runs 1 thread and takes the
calling thread's CPU time instead (a loaded machine inflates it far less).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SHAPES = {"qkv": (384, 1152), "proj": (384, 384), "fc1": (384, 1536), "fc2": (1536, 384)}
ROWS = (197, 1576)
# path -> (op, ONNXVQ_NO_AMX value or None, library registered)
PATHS = {
    "amx": ("QuantizedLinear", None, True),
    "fallback": ("QuantizedLinear", "1", True),
    "avx2": ("QuantizedLinear", "avx2", True),
    "ort": ("QuantizedLinear", "ort", True),
    "loops": ("QuantizedLinear", "loops", True),
    "plain": ("MatMulIntegerToFloat", None, False),
    "plain_u8": ("MatMulIntegerToFloatU8", None, False),
    "fp32": ("MatMulFloat", None, False),
    "amx_gelu": ("QuantizedLinearGeluQuantize", None, True),
}


def layer_model(op: str, m: int, k: int, n: int, seed: int = 0) -> tuple[onnx.ModelProto, dict]:
    """One node over A [m, k] uint8 and the DeiT-S-like constants (per-channel int8 weights);
    the GELU form adds its output quantizer."""
    rng = np.random.default_rng(seed)
    consts = {"W": rng.integers(-128, 128, (k, n)).astype(np.int8),
              "sa": np.asarray(0.02, np.float32),
              "sw": rng.uniform(1e-3, 1e-2, n).astype(np.float32),
              "za": np.asarray(128, np.uint8), "zw": np.zeros(n, np.int8),
              "bias": rng.normal(0, 1, n).astype(np.float32)}
    out = TensorProto.FLOAT
    if op == "QuantizedLinearGeluQuantize":
        consts |= {"ys": np.asarray(0.05, np.float32), "yz": np.asarray(10, np.uint8)}
        out = TensorProto.UINT8
    if op == "MatMulIntegerToFloatU8":  # the same products, weights + 128 against zero point 128
        consts["W"] = (consts["W"].astype(np.int16) + 128).astype(np.uint8)
        consts["zw"] = np.full(n, 128, np.uint8)
        op = "MatMulIntegerToFloat"
    if op == "MatMulFloat":  # the FP32 layer: the dequantized weights, MatMul, then the bias
        return _float_layer(consts, m, k, n, rng)
    domain = "com.microsoft" if op == "MatMulIntegerToFloat" else "com.onnxvq"
    node = helper.make_node(op, ["A", *consts], ["Y"], domain=domain)
    graph = helper.make_graph(
        [node], "layer", [helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k])],
        [helper.make_tensor_value_info("Y", out, [m, n])],
        [numpy_helper.from_array(v, name) for name, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                     helper.make_opsetid(domain, 1)])
    model.ir_version = 10
    feeds = {"A": rng.integers(0, 256, (m, k)).astype(np.uint8)}
    return model, feeds


def _float_layer(consts: dict, m: int, k: int, n: int,
                 rng: np.random.Generator) -> tuple[onnx.ModelProto, dict]:
    w = (consts["W"].astype(np.float32) * consts["sw"]).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["A", "W"], ["AW"]),
             helper.make_node("Add", ["AW", "bias"], ["Y"])]
    graph = helper.make_graph(
        nodes, "layer", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(consts["bias"], "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model, {"A": rng.normal(0, 1, (m, k)).astype(np.float32)}


def _child(path: str, runs: int, cpu_time: bool) -> dict[str, list[float]]:
    """In the child process: every shape's times (ms) on one path."""
    import time

    import onnxruntime as ort

    from onnxvq.core.runtime import session_options
    from onnxvq.plugins import native

    op, _, library = PATHS[path]
    times = {}
    for m in ROWS:
        for name, (k, n) in SHAPES.items():
            if op == "QuantizedLinearGeluQuantize" and name != "fc1":
                continue
            model, feeds = layer_model(op, m, k, n)
            so = session_options(threads=1 if cpu_time else 2, custom_ops=False)
            if library:
                so.register_custom_ops_library(native.ort_library_path())
            sess = ort.InferenceSession(model.SerializeToString(), so,
                                        providers=["CPUExecutionProvider"])
            sess.run(None, feeds)
            clock = time.thread_time if cpu_time else time.perf_counter
            t = []
            for _ in range(runs):
                t0 = clock()
                sess.run(None, feeds)
                t.append((clock() - t0) * 1e3)
            times[f"{m}x{k}x{n}"] = t
    return times


def measure(paths: list[str], runs: int, rounds: int,
            cpu_time: bool) -> dict[str, dict[str, list[float]]]:
    """All runs of every path, rounds alternating, each path in a fresh process."""
    out: dict[str, dict[str, list[float]]] = {p: {} for p in paths}
    for _ in range(rounds):
        for path in paths:
            env = {k: v for k, v in os.environ.items() if k != "ONNXVQ_NO_AMX"}
            if PATHS[path][1] is not None:
                env["ONNXVQ_NO_AMX"] = PATHS[path][1]
            cmd = [sys.executable, __file__, "--child", path, "--runs", str(runs)]
            proc = subprocess.run(cmd + (["--cpu-time"] if cpu_time else []), env=env,
                                  capture_output=True, text=True, check=True)
            for shape, t in json.loads(proc.stdout.splitlines()[-1]).items():
                out[path].setdefault(shape, []).extend(t)
    return out


def table(times: dict[str, dict[str, list[float]]]) -> list[dict]:
    rows = []
    shapes = sorted({s for t in times.values() for s in t}, key=lambda s: [int(v) for v in
                                                                          s.split("x")])
    for shape in shapes:
        row: dict = {"shape": shape}
        for path, t in times.items():
            if shape in t:
                row[path] = {"min_ms": float(np.min(t[shape])),
                             "median_ms": float(np.median(t[shape]))}
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loops", action="store_true", help="also time ONNXVQ_NO_AMX=loops")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results/linear.json")
    ap.add_argument("--paths", default="", help="comma-separated subset of " + ",".join(PATHS))
    ap.add_argument("--cpu-time", action="store_true", help="1 thread, thread CPU time")
    ap.add_argument("--child", choices=list(PATHS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.runs, args.cpu_time)))
        return
    paths = [p for p in PATHS if p != "loops" or args.loops]
    if args.paths:
        paths = [p for p in args.paths.split(",") if p in PATHS]
    rows = table(measure(paths, args.runs, args.rounds, args.cpu_time))
    print(f"{'M x K x N':>18} " + " ".join(f"{p + ' min/med':>18}" for p in paths)
          + "   fallback/plain  fallback/amx  avx2/plain_u8  plain_u8/fp32")
    for row in rows:
        cells = [f"{row[p]['min_ms']:8.3f}/{row[p]['median_ms']:<8.3f}" if p in row else " " * 17
                 for p in paths]
        fb, pl, amx, av, u8, f32 = (row.get(p, {}).get("min_ms") for p in (
            "fallback", "plain", "amx", "avx2", "plain_u8", "fp32"))
        ratios = (f"{fb / pl:14.2f}  {fb / amx:12.2f}" if fb and pl and amx else " " * 28)
        ratios += f"  {av / u8:13.2f}" if av and u8 else " " * 15
        ratios += f"  {u8 / f32:13.2f}" if u8 and f32 else ""
        print(f"{row['shape']:>18} " + " ".join(cells) + "   " + ratios)
    load = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "runs": args.runs, "rounds": args.rounds,
                                    "clock": "thread CPU, 1 thread" if args.cpu_time else
                                    "wall, 2 threads",
                                    "load_average": load, "machine": platform.processor()},
                                   indent=1) + "\n")
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; wrote {args.out}")


if __name__ == "__main__":
    main()
