"""This machine's roofline, measured, not looked up: peak fp32 and int8 GEMM throughput and memory
bandwidth, each from a short ONNX Runtime probe on the same thread count as the profile.

- fp32 peak: a square float MatMul (ORT's MLAS sgemm), FLOPs 2·n³ over the best of a few runs.
- int8 peak: the same shape as MatMulInteger uint8 × int8 → int32 (MLAS's u8s8 GEMM, the kernel
  behind MatMulIntegerToFloat/QLinearMatMul), same count.
- bandwidth: an Add of a scalar to a float tensor much larger than the last-level cache: bytes read
  plus bytes written over the best run.
Best-of-runs, because load from other processes only ever makes a probe slower.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
from onnx import TensorProto, helper

from onnxvq.core.runtime import make_session


@dataclass(frozen=True)
class Roofline:
    fp32_gflops: float
    int8_gops: float
    bandwidth_gbs: float
    threads: int

    def ceiling(self, intensity: float, int8: bool) -> float:
        """Attainable GFLOP/s (GOP/s for int8) at `intensity` FLOP/byte."""
        peak = self.int8_gops if int8 else self.fp32_gflops
        return min(peak, self.bandwidth_gbs * intensity)

    def ridge(self, int8: bool) -> float:
        return (self.int8_gops if int8 else self.fp32_gflops) / self.bandwidth_gbs

    def to_dict(self) -> dict:
        return asdict(self)


def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "probe", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _best(sess, feeds, repeats: int) -> float:
    sess.run(None, feeds)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        best = min(best, time.perf_counter() - t0)
    return best


def _gemm_rate(n: int, int8: bool, threads: int, repeats: int) -> float:
    rng = np.random.default_rng(0)
    if int8:
        a = rng.integers(0, 255, (n, n), dtype=np.uint8)
        b = rng.integers(-127, 127, (n, n), dtype=np.int8)
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
        types = (TensorProto.UINT8, TensorProto.INT32)
    else:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        types = (TensorProto.FLOAT, TensorProto.FLOAT)
    model = _model([node], [helper.make_tensor_value_info("a", types[0], [n, n])],
                   [helper.make_tensor_value_info("y", types[1], [n, n])],
                   [helper.make_tensor("b", TensorProto.INT8 if int8 else TensorProto.FLOAT,
                                       [n, n], b.tobytes(), raw=True)])
    sess = make_session(model, threads=threads, custom_ops=False)
    return 2 * n**3 / _best(sess, {"a": a}, repeats) / 1e9


def _bandwidth(mib: int, threads: int, repeats: int) -> float:
    count = mib * 2**20 // 4
    node = helper.make_node("Add", ["x", "one"], ["y"])
    model = _model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [count])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [count])],
                   [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    sess = make_session(model, threads=threads, custom_ops=False)
    x = np.ones(count, dtype=np.float32)
    return 2 * count * 4 / _best(sess, {"x": x}, repeats) / 1e9


_CACHE: dict[int, Roofline] = {}


def measure_roofline(threads: int = 2, *, n: int = 1024, mib: int = 128, repeats: int = 5,
                     cache: bool = True) -> Roofline:
    """About a second on two cores; cached per thread count for the process."""
    if cache and threads in _CACHE:
        return _CACHE[threads]
    roof = Roofline(_gemm_rate(n, False, threads, repeats), _gemm_rate(n, True, threads, repeats),
                    _bandwidth(mib, threads, repeats), threads)
    if cache:
        _CACHE[threads] = roof
    return roof
