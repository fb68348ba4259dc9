"""CNNs as Sparsebit quantizes them: Conv+BN folding, recognition, int8 convolutions in ORT."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest

from onnxvq.api import inspect
from onnxvq.core.config import QuantConfig
from onnxvq.models.tiny_cnn import TINY_CNN_COUNTS, build_tiny_cnn
from onnxvq.quantizer.run import quantize


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def optimized_ops(model: onnx.ModelProto, tmp_path) -> Counter:
    """The op histogram of the graph ONNX Runtime really runs (its optimized model)."""
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)


def test_inspect_reports_a_cnn_with_exact_counts():
    s = inspect(build_tiny_cnn()).structure
    assert s.is_cnn and not s.is_vit
    # BatchNorms are folded by canonicalisation, so none are left to count
    assert s.cnn.counts == {**TINY_CNN_COUNTS, "batchnorms": 0}
    assert dict(s.cnn.activations) == {"Relu": 5, "Clip": 2}


def test_cnn_runs_as_int8_convolutions_in_ort(tmp_path):
    model = build_tiny_cnn()
    result = quantize(model, None, QuantConfig(calib_size=32))
    ops = optimized_ops(result.model, tmp_path)
    # every Conv (the depthwise one too) is a QLinearConv with its Relu/Clip fused away; the
    # residual Adds, MaxPool, GlobalAveragePool and the head run on uint8 too
    assert ops["QLinearConv"] == 9 and ops["Conv"] == 0
    assert ops["Relu"] == ops["Clip"] == 0
    assert ops["QLinearAdd"] == 3 and ops["Add"] == 0
    assert ops["QLinearGlobalAveragePool"] == 1 and ops["QGemm"] == 1
    assert ops["DequantizeLinear"] == 0 and ops["QuantizeLinear"] == 1  # the image only
    depthwise = result.weight_qparams[next(n.name for n in gs.import_onnx(model).nodes
                                           if n.op == "Conv" and n.attrs.get("group", 1) > 1)]
    assert len(depthwise.scale) == 32 and depthwise.axis == 0  # per channel
    x = np.random.default_rng(4).standard_normal((8, 3, 16, 16)).astype(np.float32)
    ref, got = _run(model, x), _run(result.model, x)
    sqnr = 10 * np.log10((ref**2).sum() / ((ref - got) ** 2).sum())
    assert sqnr > 30, sqnr


def test_cnn_trt_target_is_symmetric_everywhere():
    result = quantize(build_tiny_cnn(), None, QuantConfig(calib_size=16, target="trt"))
    zps = {q.zero_point for q in result.activation_qparams.values()}
    assert zps == {0} and {q.dtype for q in result.activation_qparams.values()} == {"int8"}


@pytest.mark.parametrize("op", ["MaxPool", "Flatten"])
def test_value_preserving_ops_share_their_input_qparams(op):
    result = quantize(build_tiny_cnn(), None, QuantConfig(calib_size=16))
    graph = gs.import_onnx(result.model)
    node = next(n for n in graph.nodes if n.op == op)
    src = node.inputs[0].inputs[0]  # the DequantizeLinear in front of the op
    assert src.op == "DequantizeLinear"
    source = src.inputs[0].inputs[0].inputs[0].name  # DQ <- Q <- the op's float input
    assert result.activation_qparams[node.outputs[0].name].scale == \
        result.activation_qparams[source].scale
