"""Q-Diffusion's shortcut splitting: exact before quantization, better after it."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from onnxvq.calibrate.denoiser import TrajectoryCalibration, find_roles
from onnxvq.core.config import QuantConfig
from onnxvq.core.pipeline import PassContext, Pipeline
from onnxvq.models.tiny_denoiser import build_tiny_denoiser
from onnxvq.passes.split_shortcut import SplitShortcut
from onnxvq.quantizer.run import quantize


def _parts(model):
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model))
    return graph, [t.name for t in next(n for n in graph.nodes if n.op == "Concat").inputs]


def _feeds(n: int = 6):
    rng = np.random.default_rng(2)
    return {"sample": rng.standard_normal((n, 2, 4, 4)).astype(np.float32),
            "timestep": rng.integers(0, 1000, n).astype(np.int64),
            "class_labels": rng.integers(0, 4, n).astype(np.int64)}


def _run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_split_conv_is_equivalent_within_1e5():
    model = onnx.shape_inference.infer_shapes(build_tiny_denoiser(skip_gain=50.0))
    _, (deep, skip) = _parts(model)
    out, report = Pipeline((SplitShortcut({deep: 1.0, skip: 50.0}, 4.0),)).run(
        model, numeric="end", atol=1e-5)
    assert report.result("split-shortcut").applied == 1
    assert report.op_counts_after["Conv"] == 4 and report.op_counts_after["Concat"] == 0
    np.testing.assert_allclose(_run(out, _feeds()), _run(model, _feeds()), rtol=0, atol=1e-5)


def test_split_matmul_is_equivalent_within_1e5():
    from onnxvq.models.onnx_builder import GraphBuilder, float_input

    rng = np.random.default_rng(0)
    b = GraphBuilder(17)
    cat = b.op("Concat", "a", "c", axis=-1)
    b.op("MatMul", cat, b.weight("w", rng.standard_normal((7, 5)).astype(np.float32)), out="y")
    model = onnx.shape_inference.infer_shapes(b.build(
        [float_input("a", ["N", 3]), float_input("c", ["N", 4])], [float_input("y", ["N", 5])],
        "mm"))
    out, report = Pipeline((SplitShortcut({"a": 1.0, "c": 100.0}),)).run(model, atol=1e-5)
    assert report.result("split-shortcut").applied == 1 and report.op_counts_after["MatMul"] == 2


def test_refusals_say_why():
    model = onnx.shape_inference.infer_shapes(build_tiny_denoiser(skip_gain=2.0))
    graph, (deep, skip) = _parts(model)
    result = SplitShortcut({deep: 1.0, skip: 2.0}, 4.0).run(graph, PassContext())
    assert result.applied == 0 and result.refused[0][1] == "part ranges within 4× (2×)"
    result = SplitShortcut({deep: 1.0}, 4.0).run(graph, PassContext())
    assert result.refused[0][1] == "a concatenated part has no calibrated range"


def test_split_shortcut_gives_each_part_its_scale_and_cuts_the_error():
    model = build_tiny_denoiser(skip_gain=200.0)
    errors = {}
    for split in (None, 4.0):
        calib = TrajectoryCalibration(interval=2, per_step=8, classes=4)
        result = quantize(model, calib, QuantConfig(batch_size=8, split_shortcut=split))
        ops = Counter(n.op_type for n in result.model.graph.node)
        assert ops["Concat"] == (1 if split is None else 0)
        feeds = calib.feeds(model, 8)
        ref = np.concatenate([_run(model, f) for f in feeds])
        got = np.concatenate([_run(result.model, f) for f in feeds])
        errors[split] = float(((ref - got) ** 2).mean())
    assert find_roles(model).class_label == "class_labels"
    assert errors[4.0] < 0.5 * errors[None], errors
