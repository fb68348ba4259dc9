"""Time onnxvq's integer ops against ONNX Runtime's float ops on DeiT-S attention/LayerNorm shapes.

    python benchmarks/bench_ops.py [--repeat 50] [--threads 0] [--out benchmarks/results/ops.json]

For each op three single-node models run on the same tensor shape: ORT's float op
(LayerNormalization / Softmax / MatMul on float32), onnxvq's native kernel (libonnxvq_ort.so) and
the same onnxvq node without the library, i.e. its inlined ONNX local function. Median wall time of
`session.run` per call, after warm-up. The issue's target: native IntLayerNorm and LogIntSoftmax
within 2x of the float op. The "sqrt2" rows are the same ops with log-sqrt(2) codes
(octave_steps=2, `--lis-base sqrt2`), next to their log2 rows of the same run. `--cpu-time`
(with `--threads 1`) takes the calling thread's CPU time instead of wall time, which a loaded
machine inflates far less; the minimum over the runs is reported then.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import TensorProto, helper

from onnxvq.core.runtime import session_options
from onnxvq.plugins import native
from onnxvq.plugins.ops import (
    make_int_layer_norm_node,
    make_log_int_matmul_node,
    make_log_int_softmax_node,
)
from onnxvq.plugins.reference import layernorm_params, log_int_softmax, softmax_constants

LN_SHAPE = (8, 197, 384)
SCORES_SHAPE = (8, 6, 197, 197)
V_SHAPE = (8, 6, 197, 64)


@dataclass(frozen=True)
class Case:
    op: str
    shape: str
    float_ms: float
    native_ms: float | None
    function_ms: float

    @property
    def native_ratio(self) -> float | None:
        return None if self.native_ms is None else self.native_ms / self.float_ms


def _float_model(op: str, inputs: dict[str, np.ndarray], **attrs) -> onnx.ModelProto:
    names = list(inputs)
    node = helper.make_node(op, names, ["y"], **attrs)
    g = helper.make_graph(
        [node], op,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape) for n, a in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _int_model(build: Callable[[gs.Graph, list[gs.Variable]], gs.Variable],
               inputs: dict[str, np.ndarray]) -> onnx.ModelProto:
    g = gs.Graph(opset=17)
    g.inputs = [gs.Variable(n, a.dtype, list(a.shape)) for n, a in inputs.items()]
    g.outputs = [build(g, g.inputs)]
    model = gs.export_onnx(g)
    model.ir_version = 10
    return model


CLOCKS = {"wall": (time.perf_counter, np.median), "cpu": (time.thread_time, np.min)}


def _time(model: onnx.ModelProto, feeds: dict[str, np.ndarray], lib: str | None,
          repeat: int, threads: int, clock: str = "wall") -> float:
    so = session_options(threads=threads or None, custom_ops=False)
    if lib is not None:
        so.register_custom_ops_library(lib)
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    for _ in range(3):
        sess.run(None, feeds)
    now, summary = CLOCKS[clock]
    times = []
    for _ in range(repeat):
        t0 = now()
        sess.run(None, feeds)
        times.append(now() - t0)
    return float(summary(times)) * 1e3


_CaseModels = tuple[str, onnx.ModelProto, dict, onnx.ModelProto, dict]


def _cases(rng: np.random.Generator) -> list[_CaseModels]:
    c = LN_SHAPE[-1]
    ln_params = layernorm_params(rng.normal(1, 0.3, c), rng.normal(0, 0.3, c), 0.02,
                                 rng.integers(0, 4, c), 128, 0.03, 128)
    x_ln = rng.normal(0, 1, LN_SHAPE).astype(np.float32)
    q_ln = rng.integers(0, 256, LN_SHAPE).astype(np.uint8)
    ln_float = _float_model("LayerNormalization",
                            {"x": x_ln, "g": np.ones(c, np.float32), "b": np.zeros(c, np.float32)},
                            axis=-1, epsilon=1e-6)
    ln_int = _int_model(lambda g, i: make_int_layer_norm_node(g, i[0], ln_params, name="ln"),
                        {"x": q_ln})

    consts = softmax_constants(0.05, 4)
    scores = rng.normal(0, 1.5, SCORES_SHAPE).astype(np.float32)
    q8 = np.clip(np.round(scores / 0.05), -128, 127).astype(np.int8)
    sm_float = _float_model("Softmax", {"x": scores}, axis=-1)
    softmax = lambda g, i: make_log_int_softmax_node(g, i[0], consts, name="sm")  # noqa: E731
    consts32 = softmax_constants(1e-3, 4)
    q32 = np.round(scores / 1e-3).astype(np.int32)
    softmax32 = lambda g, i: make_log_int_softmax_node(g, i[0], consts32, name="sm")  # noqa: E731

    codes = log_int_softmax(q8, **consts.attributes())
    v_float = rng.normal(0, 1, V_SHAPE).astype(np.float32)
    v8 = rng.integers(-128, 128, V_SHAPE).astype(np.int8)
    mm_float = _float_model("MatMul", {"a": scores, "v": v_float})
    matmul = lambda g, i: make_log_int_matmul_node(g, i[0], i[1], bits=4, name="mm")  # noqa: E731

    sqrt2 = _sqrt2_cases(scores, q8, q32, v_float, v8, sm_float, mm_float)
    return [
        ("IntLayerNorm", ln_float, {"x": x_ln, "g": np.ones(c, np.float32),
                                    "b": np.zeros(c, np.float32)}, ln_int, {"x": q_ln}),
        ("LogIntSoftmax int8", sm_float, {"x": scores}, _int_model(softmax, {"x": q8}), {"x": q8}),
        ("LogIntSoftmax int32", sm_float, {"x": scores}, _int_model(softmax32, {"x": q32}),
         {"x": q32}),
        ("LogIntMatMul", mm_float, {"a": scores, "v": v_float},
         _int_model(matmul, {"a": codes, "v": v8}), {"a": codes, "v": v8}),
        *sqrt2,
    ]


def _sqrt2_cases(scores, q8, q32, v_float, v8, sm_float, mm_float) -> list[_CaseModels]:
    out = []
    for name, q, scale in (("int8", q8, 0.05), ("int32", q32, 1e-3)):
        k = softmax_constants(scale, 4, octave_steps=2)
        model = _int_model(lambda g, i, k=k: make_log_int_softmax_node(g, i[0], k, name="sm"),
                           {"x": q})
        out.append((f"LogIntSoftmax {name} sqrt2", sm_float, {"x": scores}, model, {"x": q}))
    codes = log_int_softmax(q8, **softmax_constants(0.05, 4, octave_steps=2).attributes())
    model = _int_model(lambda g, i: make_log_int_matmul_node(g, i[0], i[1], bits=4,
                                                             octave_steps=2, name="mm"),
                       {"a": codes, "v": v8})
    out.append(("LogIntMatMul sqrt2", mm_float, {"a": scores, "v": v_float}, model,
                {"a": codes, "v": v8}))
    return out


def run(repeat: int = 50, threads: int = 0, clock: str = "wall") -> list[Case]:
    lib = native.ort_library_path(build=True)
    results = []
    for name, f_model, f_feeds, i_model, i_feeds in _cases(np.random.default_rng(0)):
        shape = " x ".join(str(list(a.shape)) for a in i_feeds.values())
        results.append(Case(
            op=name,
            shape=shape,
            float_ms=_time(f_model, f_feeds, None, repeat, threads, clock),
            native_ms=None if lib is None else _time(i_model, i_feeds, lib, repeat, threads,
                                                     clock),
            function_ms=_time(i_model, i_feeds, None, max(3, repeat // 5), threads, clock),
        ))
    return results


def _table(results: list[Case]) -> str:
    head = (f"{'op':<26} {'shape':<34} {'float ms':>9} {'native ms':>10} {'x float':>8} "
            f"{'function ms':>12}")
    rows = [head, "-" * len(head)]
    for r in results:
        nat = "-" if r.native_ms is None else f"{r.native_ms:.3f}"
        ratio = "-" if r.native_ratio is None else f"{r.native_ratio:.2f}"
        rows.append(f"{r.op:<26} {r.shape:<34} {r.float_ms:>9.3f} {nat:>10} {ratio:>8} "
                    f"{r.function_ms:>12.3f}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: ORT default)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="thread CPU time, minimum of the runs (needs --threads 1)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ops.json")
    args = parser.parse_args()
    if args.cpu_time and args.threads != 1:
        parser.error("--cpu-time measures the calling thread only: add --threads 1")
    clock = "cpu" if args.cpu_time else "wall"
    results = run(args.repeat, args.threads, clock)
    print(_table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "onnxruntime": ort.__version__,
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "repeat": args.repeat,
        "clock": clock,
        "results": [{**asdict(r), "native_ratio": r.native_ratio} for r in results],
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
