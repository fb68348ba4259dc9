"""fold-batchnorm: Conv -> BatchNormalization becomes one Conv (moved from tests/test_cnn.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from onnxvq.core.pipeline import PassContext, Pipeline
from onnxvq.models.tiny_cnn import build_tiny_cnn
from onnxvq.passes.fold_batchnorm import FoldBatchNorm


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def test_fold_batchnorm_removes_every_bn_and_keeps_outputs():
    model = build_tiny_cnn()
    out, report = Pipeline((FoldBatchNorm(),)).run(model, numeric="end", atol=1e-5)
    assert report.result("fold-batchnorm").applied == 9
    assert report.op_counts_after["BatchNormalization"] == 0
    assert report.op_counts_after["Conv"] == 9
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(_run(out, x), _run(model, x), rtol=0, atol=1e-5)


def test_fold_batchnorm_refuses_a_shared_conv_output():
    graph = gs.import_onnx(build_tiny_cnn())
    bn = next(n for n in graph.nodes if n.op == "BatchNormalization")
    extra = gs.Variable("extra", dtype=np.float32)
    graph.nodes.append(gs.Node("Relu", inputs=[bn.inputs[0]], outputs=[extra]))
    graph.outputs.append(extra)
    result = FoldBatchNorm().run(graph, PassContext())
    assert result.applied == 8
    assert result.refused == [(bn.name, "the Conv output is also read elsewhere")]


def _first_bn(graph: gs.Graph) -> gs.Node:
    return next(n for n in graph.nodes if n.op == "BatchNormalization")


def test_fold_batchnorm_refuses_training_mode():
    graph = gs.import_onnx(build_tiny_cnn())
    bn = _first_bn(graph)
    bn.attrs["training_mode"] = 1
    result = FoldBatchNorm().run(graph, PassContext())
    assert result.applied == 8
    assert result.refused == [(bn.name, "BatchNormalization in training mode")]


def test_fold_batchnorm_refuses_computed_statistics():
    graph = gs.import_onnx(build_tiny_cnn())
    bn = _first_bn(graph)
    mean = gs.Variable("mean_in", dtype=np.float32, shape=list(bn.inputs[3].shape))
    graph.inputs.append(mean)
    bn.inputs[3] = mean
    result = FoldBatchNorm().run(graph, PassContext())
    assert result.applied == 8
    assert result.refused == [(bn.name, "a weight or statistic is not constant")]
