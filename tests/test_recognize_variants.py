"""Recognition and quantization of SwinV2's cosine attention (res-post-norm blocks) and EVA-02's
rotary attention with a SwiGLU MLP, on the tiny ONNX builds of models/tiny_variants.py (the real
timm/torchvision exports are tests/models/test_families.py). Before, neither attention was found
(q and k do not come from a projection through layout ops only) and --lis did nothing."""

from __future__ import annotations

from collections import Counter

import pytest

import onnxvq
from onnxvq.core.config import QuantConfig
from onnxvq.core.graph import to_graph
from onnxvq.core.walk import producer
from onnxvq.models.tiny_variants import build_variant

CALIB = dict(calib_size=8, batch_size=4)


@pytest.fixture(scope="module")
def models():
    return {k: build_variant(k) for k in ("cosine", "rotary", "qknorm")}


@pytest.fixture(scope="module")
def inspected(models):
    return {k: onnxvq.inspect(m) for k, m in models.items()}


@pytest.mark.parametrize("kind, layernorms, placement", [("cosine", 6, "res-post-norm"),
                                                         ("rotary", 5, "pre-norm"),
                                                         ("qknorm", 9, "pre-norm")])
def test_exact_counts(inspected, kind, layernorms, placement):
    s = inspected[kind].structure
    assert s.counts == dict(blocks=2, attentions=2, layernorms=layernorms, mlps=2,
                            residual_adds=4)
    assert {b.placement for b in s.blocks} == {placement}
    assert [(a.heads, a.head_dim, a.qkv) for a in s.attentions] == [(4, 16, "packed")] * 2
    assert all(len(b.residuals) == 2 and b.mlp is not None for b in s.blocks)
    assert not s.unrecognised["MatMul"] and not s.unrecognised["Softmax"]


def test_cosine_attention_operands_are_the_normalised_q_and_k(inspected):
    """Q·Kᵀ reads x / ‖x‖ (k through its transpose); the per-head exp(τ) [H,1,1] Mul and the
    bias Add are the score path; res-post-norm: each block's norms sit on its branches."""
    insp = inspected["cosine"]
    graph = to_graph(insp.model)
    tensors = graph.tensors()
    for block in insp.structure.blocks:
        a = block.attention
        assert producer(tensors[a.q]).op == "Div"
        assert producer(producer(tensors[a.k]).inputs[0]).op == "Div"
        assert a.additive_bias and a.scale == 1.0  # the logit scale is per head, not a scalar
        norms = {n.name: n for n in graph.nodes if n.name in block.norms}
        branches = {r.branch for r in block.residuals}
        assert {n.outputs[0].name for n in norms.values()} == branches


def test_rotary_q_k_are_rotated_in_float_and_swiglu_is_one_mlp(inspected):
    insp = inspected["rotary"]
    tensors = to_graph(insp.model).tensors()
    for block in insp.structure.blocks:
        a, m = block.attention, block.mlp
        assert producer(tensors[a.q]).op == "Concat"  # class token + rotated tokens
        assert a.projections[0].out_features == 3 * 64 and a.out_proj is not None
        assert m.activation.kind == "silu" and m.gate is not None
        assert (m.fc1.out_features, m.fc2.in_features) == (256, 128)  # packed x₁, x₂


@pytest.mark.parametrize("kind, flags, floor", [
    ("cosine", {}, 21), ("cosine", {"lis": True}, 14), ("cosine", {"pts": True, "lis": True}, 10),
    ("cosine", {"target": "trt"}, 21),
    ("rotary", {}, 17), ("rotary", {"lis": True}, 10), ("rotary", {"target": "trt"}, 16)])
def test_quantizes_through_the_gate(models, kind, flags, floor):
    """Measured (8 noise samples): cosine 24.8 / 16.9 / 13.3 / 24.1 dB, rotary 20.1 / 13.5 /
    19.2 dB; the plain tiny ViT loses the same ~5 dB to LIS (19.9 → 14.8)."""
    result = onnxvq.quantize(models[kind], None, QuantConfig(**CALIB, **flags))
    assert result.fidelity["outputs"][0]["sqnr_db"] > floor
    ops = Counter(n.op_type for n in result.model.graph.node)
    assert ops["LogIntSoftmax"] == (2 if flags.get("lis") else 0)
    assert ops["IntLayerNorm"] + ops["AddIntLayerNorm"] == (6 if flags.get("pts") else 0)
    roles = Counter(s.role for s in result.plan.activations)
    assert roles["scores"] == 4 and roles["gate"] == (4 if kind == "rotary" else 0)


def test_qknorm_operands_are_the_normalised_q_and_k(inspected):
    """Q·Kᵀ reads LayerNorm(q)·scale and LayerNorm(k)ᵀ, each norm over a head's 16 channels;
    the four qk norms count as LayerNorms (torch's nn.LayerNorm count) but belong to no block's
    norms. Before, no attention was found (a LayerNorm was not a derived op) and --lis did
    nothing."""
    insp = inspected["qknorm"]
    tensors = to_graph(insp.model).tensors()
    channels = sorted(n.channels for n in insp.structure.layernorms)
    assert channels == [16] * 4 + [64] * 5
    for block in insp.structure.blocks:
        a = block.attention
        for t in (a.q, a.k):  # through the scale Mul and kᵀ's Transpose
            node = producer(tensors[t])
            while node.op in ("Mul", "Transpose"):
                node = producer(node.inputs[0])
            assert node.op == "LayerNormalization" and node.inputs[0].shape[-1] == 16
        assert a.scale == pytest.approx(16 ** -0.5) and len(block.norms) == 2


@pytest.mark.parametrize("flags, floor, int_norms", [
    ({}, 21, 0), ({"lis": True}, 15, 0), ({"pts": True, "lis": True}, 11, 9),
    ({"target": "trt"}, 20, 0)])
def test_qknorm_quantizes_through_the_gate(models, flags, floor, int_norms):
    """Measured (8 noise samples): 23.6 / 17.8 / 13.5 / 22.6 dB (W8/A8, --lis, --pts --lis,
    trt); the normalised q and k are the scores' int8 operands; PTS takes the qk norms too."""
    result = onnxvq.quantize(models["qknorm"], None, QuantConfig(**CALIB, **flags))
    assert result.fidelity["outputs"][0]["sqnr_db"] > floor
    ops = Counter(n.op_type for n in result.model.graph.node)
    assert ops["LogIntSoftmax"] == (2 if flags.get("lis") else 0)
    assert ops["IntLayerNorm"] + ops["AddIntLayerNorm"] == int_norms
    assert Counter(s.role for s in result.plan.activations)["scores"] == 4


def test_tanh_gelu_with_the_cube_as_two_muls_is_one_activation():
    """torch 2.14's TorchScript export writes x³ in F.gelu(approximate="tanh") as x·(x·x)
    (MaxViT's MLPs); before, only Pow(x, 3) matched and none of MaxViT's 8 MLPs was found."""
    import numpy as np

    from onnxvq.recognise.activations import match_activation

    def build(b, x):
        h = _linear(b, x, 1)
        cube = b.op("Mul", h, b.op("Mul", h, h))
        inner = b.op("Mul", b.const(np.float32(0.7978846)),
                     b.op("Add", h, b.op("Mul", b.const(np.float32(0.044715)), cube)))
        act = b.op("Mul", b.const(np.float32(0.5)),
                   b.op("Mul", h, b.op("Add", b.const(np.float32(1.0)), b.op("Tanh", inner))))
        return _linear(b, act, 2)

    graph = _graph(build)
    (tanh,) = [n for n in graph.nodes if n.op == "Tanh"]
    unit, x, out = match_activation(tanh)
    assert unit.kind == "gelu_tanh" and len(unit.nodes) == 9
    assert producer(x).op == "MatMul" and out.outputs[0].op == "MatMul"


@pytest.mark.parametrize("factor, kind", [(1.702, "gelu_quick"), (1.5, None)])
def test_quick_gelu_is_one_activation(factor, kind):
    """Hugging Face CLIP's QuickGELU x·σ(1.702·x) between two linears is one unit (before, none
    of its MLPs was found); another factor is not QuickGELU (nor SiLU: σ's input is not x)."""
    import numpy as np

    from onnxvq.recognise.activations import match_activation

    def build(b, x):
        h = _linear(b, x, 1)
        act = b.op("Mul", h, b.op("Sigmoid", b.op("Mul", h, b.const(np.float32(factor)))))
        return _linear(b, act, 2)

    graph = _graph(build)
    (sigmoid,) = [n for n in graph.nodes if n.op == "Sigmoid"]
    unit = match_activation(sigmoid)
    assert (unit[0].kind if unit else None) == kind
    if unit:
        assert len(unit[0].nodes) == 3 and producer(unit[1]).op == "MatMul"


def test_swiglu_gate_product_reads_int8_operands(models, tmp_path):
    """Q/DQ on both operands of act(x₁)·x₂, which ONNX Runtime then runs as QLinearMul."""
    import onnx
    import onnxruntime as ort

    result = onnxvq.quantize(models["rotary"], None, QuantConfig(**CALIB))
    graph = to_graph(result.model)
    gates = {b.mlp.gate for b in result.structure.blocks}
    muls = [n for n in graph.nodes if n.name in gates]
    assert len(muls) == 2
    assert all(producer(i).op == "DequantizeLinear" for n in muls for i in n.inputs)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(result.model.SerializeToString(), so,
                         providers=["CPUExecutionProvider"])
    optimized = onnx.load(so.optimized_model_filepath)
    assert Counter(n.op_type for n in optimized.graph.node)["QLinearMul"] == 2


def _graph(build):
    """A one-input graph x [2, 8, 16] made by `build(b, x) -> output name`."""
    import onnx

    from onnxvq.models.onnx_builder import GraphBuilder, float_input

    b = GraphBuilder(17)
    out = build(b, "x")
    model = b.build([float_input("x", [2, 8, 16])], [float_input(out, [2, "n", 16])], "g")
    onnx.checker.check_model(model)
    return to_graph(model)


def _linear(b, x, seed):
    import numpy as np

    w = np.random.default_rng(seed).standard_normal((16, 16)).astype(np.float32)
    return b.op("MatMul", x, b.weight(f"w{seed}", w))


@pytest.mark.parametrize("build, expect", [
    # L2 normalisation of one projection: traced to it
    (lambda b, x: b.op("Div", y := _linear(b, x, 1), b.op("Expand", b.op(
        "Clip", b.op("ReduceL2", y, axes=[-1], keepdims=1), b.const(1e-12)), b.op("Shape", y))),
     "MatMul_1"),
    # two projections mixed (a residual, a second stream): no single projection
    (lambda b, x: b.op("Add", _linear(b, x, 1), _linear(b, x, 2)), None),
    # the graph input itself on one side of a Concat
    (lambda b, x: b.op("Concat", _linear(b, x, 1), x, axis=1), None),
    # an op outside the derived set (Softmax) between the projection and the operand
    (lambda b, x: b.op("Mul", y := _linear(b, x, 1), b.op("Softmax", y, axis=-1)), None),
    # qk-norm's LayerNorm (constant gamma/beta) and Hiera's max-pooled queries: traced through
    (lambda b, x: b.op("LayerNormalization", _linear(b, x, 1), b.const([1.0] * 16),
                       b.const([0.0] * 16), axis=-1), "MatMul_1"),
    (lambda b, x: b.op("ReduceMax", b.op("Reshape", _linear(b, x, 1), b.const([2, 2, 4, 16])),
                       axes=[1], keepdims=0), "MatMul_1"),
    # a LayerNorm of the graph input (a pre-norm, no projection): not traced to a linear
    (lambda b, x: b.op("LayerNormalization", x, b.const([1.0] * 16), b.const([0.0] * 16),
                       axis=-1), None),
])
def test_trace_linear_needs_one_projection_on_every_path(build, expect):
    from onnxvq.recognise.attention import trace_linear

    graph = _graph(build)
    found = trace_linear(graph.outputs[0])
    assert (found.name if found is not None else None) == expect


@pytest.mark.parametrize("group, expect_conv", [(16, True), (1, False)])
def test_mlp_with_a_depthwise_conv_between_fc1_and_the_activation(group, expect_conv):
    """PVTv2's MlpWithDepthwiseConv: fc1, the tokens laid out as a map, a depthwise 3x3 Conv, back
    to tokens, GELU, fc2 is one MLP with its conv recorded (before, none of its 4 MLPs was found
    and their residuals were missed). A dense Conv there is not an MLP's."""
    import numpy as np

    from onnxvq.recognise.activations import match_activation
    from onnxvq.recognise.mlp import mlp_of

    def build(b, x):
        grid = b.op("Reshape", b.op("Transpose", _linear(b, x, 1), perm=[0, 2, 1]),
                    b.const([2, 16, 2, 4], np.int64))
        w = np.random.default_rng(3).standard_normal((16, 16 // group, 3, 3)).astype(np.float32)
        conv = b.op("Conv", grid, b.weight("dw", w), group=group, pads=[1, 1, 1, 1])
        tokens = b.op("Transpose", b.op("Reshape", conv, b.const([2, 16, 8], np.int64)),
                      perm=[0, 2, 1])
        return _linear(b, b.op("Relu", tokens), 2)

    graph = _graph(build)
    (relu,) = [n for n in graph.nodes if n.op == "Relu"]
    mlp = mlp_of(*match_activation(relu))
    assert (mlp is not None) == expect_conv
    if mlp is not None:
        assert (mlp.fc1.node, mlp.fc2.node) == ("MatMul_1", "MatMul_2")
        assert [n.op for n in graph.nodes if n.name == mlp.conv] == ["Conv"]


def test_layout_ops_without_a_conv_do_not_make_an_mlp():
    """fc1, a Transpose pair, act, fc2: no depthwise conv, so not the PVTv2 form (a plain MLP's
    fc1 feeds its activation through a bias Add only)."""
    from onnxvq.recognise.activations import match_activation
    from onnxvq.recognise.mlp import mlp_of

    def build(b, x):
        h = b.op("Transpose", b.op("Transpose", _linear(b, x, 1), perm=[0, 2, 1]), perm=[0, 2, 1])
        return _linear(b, b.op("Relu", h), 2)

    graph = _graph(build)
    (relu,) = [n for n in graph.nodes if n.op == "Relu"]
    assert mlp_of(*match_activation(relu)) is None


@pytest.mark.parametrize("layers, units", [(2, 1), (3, 2), (4, 3)])
def test_a_deeper_mlp_is_one_mlp(layers, units):
    """YOLOS' (and DETR's) 3-layer ReLU box and class heads, linear-act-linear-act-linear: each
    act is a unit between two linears (both pairs keep their MLP records for placement), but the
    chain is one MLP in the counts, as the torch module is (before: two for YOLOS' heads)."""
    from onnxvq.recognise.model import recognise

    def build(b, x):
        h = _linear(b, x, 1)
        for seed in range(2, layers + 1):
            h = _linear(b, b.op("Relu", h), seed)
        return h

    s = recognise(_graph(build))
    assert len(s.mlps) == units and s.chained_mlps == units - 1 and s.counts["mlps"] == 1


@pytest.mark.parametrize("square", ["pow", "mul"])
def test_star_relu_is_one_activation(square):
    """MetaFormer's StarReLU s·relu(x)² + b (CAFormer's and ConvFormer's MLPs) between two
    linears is one unit, an MLP (before: the Relu's consumer was the square, no MLP found)."""
    import numpy as np

    from onnxvq.recognise.activations import match_activation
    from onnxvq.recognise.mlp import mlp_of

    def build(b, x):
        r = b.op("Relu", _linear(b, x, 1))
        sq = b.op("Pow", r, b.const(np.float32(2.0))) if square == "pow" else b.op("Mul", r, r)
        act = b.op("Add", b.op("Mul", b.const(np.array([0.8], np.float32)), sq),
                   b.const(np.array([-0.1], np.float32)))
        return _linear(b, act, 2)

    graph = _graph(build)
    (relu,) = [n for n in graph.nodes if n.op == "Relu"]
    unit = match_activation(relu)
    assert unit[0].kind == "star_relu" and len(unit[0].nodes) == 4
    mlp = mlp_of(*unit)
    assert (mlp.fc1.node, mlp.fc2.node) == ("MatMul_1", "MatMul_2")
