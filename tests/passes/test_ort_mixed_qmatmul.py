"""ort-mixed-qmatmul: uint8·uint8 scores requantized to int8 stay an integer GEMM in ORT."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from qdq_graphs import Builder, op_types, run_model

from onnxvq.core.pipeline import Pipeline
from onnxvq.core.runtime import session_options
from onnxvq.passes.ort_mixed_qmatmul import OrtMixedQMatMul


def _scores(out_dtype):
    b = Builder()
    s = b.op("MatMul", b.qdq("q", 0.05), b.qdq("k", 0.04, 120))[0]
    sc, zp = b.const(np.float32(0.1)), b.const(np.array(0, dtype=out_dtype))
    y = b.op("DequantizeLinear", b.op("QuantizeLinear", s, sc, zp)[0], sc, zp)[0]
    return b.model({"q": [2, 3, 5, 8], "k": [2, 3, 8, 5]}, {y: [2, 3, 5, 5]})


def _ort_ops(model, tmp_path) -> list[str]:
    so = session_options(threads=1)
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]


def test_int8_requantized_scores_stay_integer(tmp_path):
    model = _scores(np.int8)
    out, report = Pipeline((OrtMixedQMatMul(),)).run(model, numeric="none")
    assert report.result("ort-mixed-qmatmul").applied == 1
    assert "MatMul" not in _ort_ops(out, tmp_path)
    assert op_types(out).count("MatMulIntegerToFloat") == 1
    rng = np.random.default_rng(5)
    feeds = {"q": rng.standard_normal((2, 3, 5, 8)).astype(np.float32),
             "k": rng.standard_normal((2, 3, 8, 5)).astype(np.float32)}
    a, b = run_model(model, feeds)[0], run_model(out, feeds)[0]
    assert np.abs(a - b).max() <= 0.1 + 1e-6  # at most one output step, from float rounding
    assert np.mean(a != b) < 0.02


def test_same_type_is_left_to_ort():
    _, report = Pipeline((OrtMixedQMatMul(),)).run(_scores(np.uint8), numeric="none")
    assert report.result("ort-mixed-qmatmul").applied == 0
