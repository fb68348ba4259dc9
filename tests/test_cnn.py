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
from onnxvq.core.metrics import sqnr
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
    db = sqnr(ref, got)
    assert db > 30, db


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


def test_pts_on_a_conv_model_with_a_layernorm_after_a_residual_add():
    """A model with no transformer block (the CNN plan) whose residual Add feeds a LayerNorm
    (MViTv2's stream): the CNN plan put a DQ in front of the LayerNorm, and with --pts the
    IntLayerNorm that replaced it left insert-activation-qdq a name it no longer had (KeyError,
    a traceback). Now the norm takes its float input; measured 34.3 dB either way."""
    from onnxvq.api import quantize as quantize_gated
    from onnxvq.models.onnx_builder import GraphBuilder, float_input

    rng = np.random.default_rng(0)
    b = GraphBuilder(17)

    def conv(x, cin, cout, name):
        w = (rng.standard_normal((cout, cin, 3, 3)) * 0.3).astype(np.float32)
        bias = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        return b.op("Conv", x, b.weight(name + ".w", w), b.weight(name + ".b", bias),
                    pads=[1, 1, 1, 1])

    y = b.op("Relu", conv("input", 3, 8, "c1"))
    z = b.op("Add", y, conv(y, 8, 8, "c2"))
    gamma = (1 + 0.1 * rng.standard_normal(8)).astype(np.float32)
    norm = b.op("LayerNormalization", z, b.weight("ln.w", gamma),
                b.weight("ln.b", (0.1 * rng.standard_normal(8)).astype(np.float32)), axis=-1)
    b.op("GlobalAveragePool", conv(norm, 8, 4, "c3"), out="logits")
    model = b.build([float_input("input", ["batch", 3, 8, 8])],
                    [float_input("logits", ["batch", 4, 1, 1])], "cnn_ln")
    for flags, int_norms in (({}, 0), ({"pts": True}, 1)):
        result = quantize_gated(model, None, QuantConfig(calib_size=8, batch_size=4, **flags))
        assert result.structure.is_cnn
        ops = Counter(n.op_type for n in result.model.graph.node)
        norms = ops["IntLayerNorm"] + ops["AddIntLayerNorm"]  # after the Add: one AddIntLayerNorm
        assert norms == int_norms and ops["LayerNormalization"] == 1 - int_norms
        assert result.fidelity["outputs"][0]["sqnr_db"] > 31
