"""fold-linear-batchnorm: LeViT's Linear -> Flatten -> BatchNorm -> Reshape becomes MatMul + bias
Add (and Gemm -> BatchNorm one Gemm); every refusal reason."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxvq.core.pipeline import PassContext, Pipeline
from onnxvq.passes.fold_linear_batchnorm import FoldLinearBatchNorm

rng = np.random.default_rng(0)


def _init(name: str, *shape: int, positive: bool = False) -> onnx.TensorProto:
    v = rng.standard_normal(shape).astype(np.float32)
    return numpy_helper.from_array(np.abs(v) + 0.1 if positive else v, name)


def _bn(name: str, x: str, out: str, c: int) -> tuple[onnx.NodeProto, list]:
    inits = [_init(f"{name}.g", c), _init(f"{name}.b", c), _init(f"{name}.m", c),
             _init(f"{name}.v", c, positive=True)]
    node = helper.make_node("BatchNormalization", [x, *(i.name for i in inits)], [out], name=name,
                            epsilon=1e-5)
    return node, inits


def _model(flatten_axis: int = 2) -> onnx.ModelProto:
    """Tokens [2, 5, 8]: MatMul(·, W[8, 6]) -> Flatten -> BN -> Reshape(Shape) (LeViT's
    LinearNorm), then the pooled [2, 6] through Gemm(transB, C) -> BN."""
    c = 6 if flatten_axis == 2 else 30
    bn1, i1 = _bn("bn1", "flat", "normed", c)
    bn2, i2 = _bn("bn2", "g", "y", 4)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["mm"], name="mm"),
             helper.make_node("Flatten", ["mm"], ["flat"], name="flatten", axis=flatten_axis),
             bn1,
             helper.make_node("Shape", ["mm"], ["shape"], name="shape"),
             helper.make_node("Reshape", ["normed", "shape"], ["tokens"], name="reshape"),
             helper.make_node("ReduceMean", ["tokens"], ["pooled"], name="pool", axes=[1],
                              keepdims=0),
             helper.make_node("Gemm", ["pooled", "w2", "c2"], ["g"], name="gemm", transB=1),
             bn2]
    f = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "levit_linear_bn",
                              [helper.make_tensor_value_info("x", f, [2, 5, 8])],
                              [helper.make_tensor_value_info("y", f, [2, 4]),
                               helper.make_tensor_value_info("tokens", f, [2, 5, 6])],
                              [_init("w1", 8, 6), _init("w2", 4, 6), _init("c2", 4), *i1, *i2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def test_folds_both_batchnorms_and_keeps_outputs():
    model = _model()
    out, report = Pipeline((FoldLinearBatchNorm(),)).run(model, numeric="end", atol=1e-5)
    assert report.result("fold-linear-batchnorm").applied == 2
    ops = report.op_counts_after
    assert ops["BatchNormalization"] == 0 and ops["Flatten"] == 0 and ops["Reshape"] == 0
    assert ops["MatMul"] == 1 and ops["Gemm"] == 1 and ops["Add"] == 1
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    for got, want in zip(_run(out, x), _run(model, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    names = {n.name for n in out.graph.node}
    assert "mm/bn_bias" in names  # the bias Add the recogniser reads as the Linear's bias


def _graph(model: onnx.ModelProto | None = None) -> gs.Graph:
    return gs.import_onnx(model or _model())


def _node(graph: gs.Graph, name: str) -> gs.Node:
    return next(n for n in graph.nodes if n.name == name)


def test_refuses_training_mode():
    graph = _graph()
    _node(graph, "bn1").attrs["training_mode"] = 1
    result = FoldLinearBatchNorm().run(graph, PassContext())
    assert result.applied == 1
    assert result.refused == [("bn1", "BatchNormalization in training mode")]


def test_refuses_a_linear_output_read_elsewhere():
    graph = _graph()
    extra = gs.Variable("extra", dtype=np.float32)
    graph.nodes.append(gs.Node("Relu", inputs=[_node(graph, "mm").outputs[0]], outputs=[extra]))
    graph.outputs.append(extra)
    result = FoldLinearBatchNorm().run(graph, PassContext())
    assert result.refused == [("bn1", "the linear output is also read elsewhere")]


def test_refuses_computed_statistics():
    graph = _graph()
    bn = _node(graph, "bn2")
    mean = gs.Variable("mean_in", dtype=np.float32, shape=[4])
    graph.inputs.append(mean)
    bn.inputs[3] = mean
    result = FoldLinearBatchNorm().run(graph, PassContext())
    assert result.applied == 1 and result.refused == [("bn2", "a weight or statistic is not "
                                                              "constant")]


def test_refuses_a_flatten_that_merges_tokens_into_channels():
    """Flatten(axis=1) of [2, 5, 6] is [2, 30]: the BatchNorm's channels are token×feature, not
    a per-feature scale the weight can take."""
    result = FoldLinearBatchNorm().run(_graph(_model(flatten_axis=1)), PassContext())
    assert result.applied == 1
    assert result.refused == [("bn1", "the BatchNorm's channels are not the linear's output "
                                      "features")]
