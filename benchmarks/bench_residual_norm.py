"""Time the residual-norm kernels on DeiT-S shapes: W8/A8's AddLayerNormQuantize against --pts's
AddIntLayerNorm and the unfused pair it replaces (AddMulQuantizeLinear + IntLayerNorm).

    python benchmarks/bench_residual_norm.py [--batches 1 8] [--repeat 300] [--threads 2]
        [--baseline LIB] [--out benchmarks/results/residual_norm.json]

One single-node (or two-node) model per kernel, all sessions built up front and run interleaved
(round-robin, `repeat` rounds), so a load change hits every kernel alike; the median and the
minimum ms per call are reported. With `--threads 1` the kernels run on the calling thread and
its CPU time is taken instead of wall time (a loaded machine inflates it far less).
`--baseline LIB` also runs AddIntLayerNorm and the pair on another build of libonnxvq_ort.so
(e.g. main's, before a kernel change) in the same rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxvq.core.runtime import session_options
from onnxvq.plugins import native
from onnxvq.plugins.functions import DOMAIN
from onnxvq.plugins.ops import add_functions
from onnxvq.plugins.reference import layernorm_params

TOKENS, C, S1 = 197, 384, 0.0371


def _model(nodes: list, inits: list, outs: list) -> onnx.ModelProto:
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, TOKENS, C]) for n in "ab"]
    graph = helper.make_graph(nodes, "g", ins, outs, inits)
    return add_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                           ir_version=8))


def models(rng: np.random.Generator) -> dict[str, onnx.ModelProto]:
    alpha = rng.integers(0, 4, C)
    p = layernorm_params(rng.normal(1, 0.4, C), rng.normal(0, 0.5, C), S1, alpha, 3, 0.03, 128)
    f = numpy_helper.from_array
    pts = [f((2.0 ** -alpha).astype(np.float32), "m"), f(np.float32(S1), "s"),
           f(np.uint8(3), "z"), f(p.alpha, "al"), f(p.gamma, "ga"), f(p.beta, "be")]
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, None)
    total = helper.make_tensor_value_info("sum", TensorProto.FLOAT, None)
    fused = helper.make_node("AddIntLayerNorm", ["a", "b", "m", "s", "z", "al", "ga", "be"],
                             ["y", "sum"], domain=DOMAIN, **p.attributes())
    pair = [helper.make_node("AddMulQuantizeLinear", ["a", "b", "m", "s", "z"], ["x", "sum"],
                             domain=DOMAIN),
            helper.make_node("IntLayerNorm", ["x", "al", "ga", "be"], ["y"], domain=DOMAIN,
                             **p.attributes())]
    w8 = [f(rng.normal(1, 0.4, C).astype(np.float32), "g"),
          f(rng.normal(0, 0.5, C).astype(np.float32), "bt"), f(np.float32(0.03), "s"),
          f(np.uint8(128), "z")]
    alnq = helper.make_node("AddLayerNormQuantize", ["a", "b", "g", "bt", "s", "z"], ["y", "sum"],
                            domain=DOMAIN, epsilon=1e-6)
    return {"AddLayerNormQuantize (W8/A8)": _model([alnq], w8, [y, total]),
            "AddIntLayerNorm (--pts)": _model([fused], pts, [y, total]),
            "AddMulQuantizeLinear + IntLayerNorm": _model(pair, pts, [y, total])}


def _session(model: onnx.ModelProto, lib: str, threads: int) -> ort.InferenceSession:
    so = session_options(threads=threads, custom_ops=False)
    so.register_custom_ops_library(lib)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run(batch: int, repeat: int, threads: int, baseline: str | None) -> dict[str, dict]:
    rng = np.random.default_rng(0)
    lib = native.ort_library_path(build=True)
    built = models(rng)
    sessions = {name: _session(m, lib, threads) for name, m in built.items()}
    for name in ("AddIntLayerNorm (--pts)", "AddMulQuantizeLinear + IntLayerNorm"):
        if baseline:
            sessions[f"{name} (baseline build)"] = _session(built[name], baseline, threads)
    feeds = {k: rng.normal(0, 3, (batch, TOKENS, C)).astype(np.float32) for k in "ab"}
    clock = time.thread_time if threads == 1 else time.perf_counter
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(5):
        for s in sessions.values():
            s.run(None, feeds)
    for _ in range(repeat):
        for name, s in sessions.items():
            t0 = clock()
            s.run(None, feeds)
            times[name].append((clock() - t0) * 1e3)
    return {n: {"median_ms": float(np.median(t)), "min_ms": float(np.min(t))}
            for n, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeat", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baseline", help="another libonnxvq_ort.so to run the --pts kernels on")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/residual_norm.json"))
    args = ap.parse_args()
    results = {"load_average": os.getloadavg(), "threads": args.threads, "batches": {}}
    for batch in args.batches:
        res = run(batch, args.repeat, args.threads, args.baseline)
        results["batches"][batch] = res
        print(f"batch {batch} ({TOKENS} tokens x {C}), ms per call: median / min")
        for name, r in res.items():
            print(f"  {name:<52} {r['median_ms']:8.3f} {r['min_ms']:8.3f}")
    results["load_average_end"] = os.getloadavg()
    print(f"load average {results['load_average']} -> {results['load_average_end']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
