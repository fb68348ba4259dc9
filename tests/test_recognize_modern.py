"""Recognition of today's ViT exports' norms and MLPs, on the tiny ONNX builds of
models/tiny_variants.py (the real timm exports are tests/models/test_families.py):

- BEiT-3's sub-LN (a LayerNorm between A·V and the output projection, and between the GELU and
  fc2). Before: the output projection and both MLPs were not found, so 0 MLPs, 0 residuals.
- AIMv2's RMSNorm (decomposed: Pow, ReduceMean, Add ε, Sqrt, Reciprocal, Mul, Mul γ) and its
  SwiGLU with two fc1 linears. Before: placement "none" and the x₂ linear unclaimed; now 5
  RMSNorms are counted, the blocks are pre-norm, and --pts, which has no RMSNorm form, is
  refused by name (--pts --lis: LIS alone, with a warning naming the RMSNorms)."""

from __future__ import annotations

import pytest

import onnxvq
from onnxvq.core.config import QuantConfig
from onnxvq.core.errors import UnsupportedModelError
from onnxvq.core.graph import to_graph
from onnxvq.models.tiny_variants import build_variant
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.recognise.model import recognise

CALIB = dict(calib_size=8, batch_size=4)


@pytest.fixture(scope="module")
def models():
    return {k: build_variant(k) for k in ("subln", "rmsnorm")}


@pytest.fixture(scope="module")
def inspected(models):
    return {k: onnxvq.inspect(m) for k, m in models.items()}


@pytest.mark.parametrize("kind, norms", [("subln", dict(layernorms=9)),
                                         ("rmsnorm", dict(layernorms=0, rmsnorms=5))])
def test_exact_counts(inspected, kind, norms):
    s = inspected[kind].structure
    assert s.counts == dict(blocks=2, attentions=2, mlps=2, residual_adds=4, **norms)
    assert {b.placement for b in s.blocks} == {"pre-norm"}
    assert all(len(b.residuals) == 2 and b.mlp is not None and len(b.norms) == 2
               for b in s.blocks)
    assert not s.unrecognised["MatMul"] and not s.unrecognised["Mul"]


def test_sub_ln_sits_between_the_context_and_the_output_projection(inspected):
    insp = inspected["subln"]
    graph = to_graph(insp.model)
    nodes = {n.name: n for n in graph.nodes}
    for block in insp.structure.blocks:
        proj, fc2 = block.attention.out_proj, block.mlp.fc2
        assert nodes[proj.node].inputs[0].inputs[0].op == "LayerNormalization"
        assert nodes[fc2.node].inputs[0].inputs[0].op == "LayerNormalization"
        assert block.mlp.activation.kind == "gelu_erf"


def test_rmsnorm_units_and_two_linear_swiglu(inspected):
    s = inspected["rmsnorm"].structure
    assert [r.channels for r in s.rmsnorms] == [64] * 5
    assert all(len(r.nodes) == 7 for r in s.rmsnorms)  # Pow ... Mul γ
    by_end = {r.node for r in s.rmsnorms}
    for block in s.blocks:
        assert set(block.norms) <= by_end  # the pre-norms are RMSNorms
        m = block.mlp
        assert m.activation.kind == "silu" and m.gate is not None and m.fc1_x is not None
        assert (m.fc1.out_features, m.fc1_x.out_features, m.fc2.in_features) == (128, 128, 128)


def test_a_decomposed_layernorm_is_not_an_rmsnorm():
    """x - μ under the same Pow/ReduceMean/Sqrt chain is a LayerNorm's (before FuseLayerNorm)."""
    graph = to_graph(build_tiny_vit(TinyViTConfig(layernorm="decomposed")))
    assert recognise(graph).rmsnorms == []


@pytest.mark.parametrize("kind, flags, floor", [
    ("subln", {}, 15), ("subln", {"lis": True}, 7), ("subln", {"pts": True, "lis": True}, 6),
    ("subln", {"target": "trt"}, 16), ("rmsnorm", {}, 15), ("rmsnorm", {"lis": True}, 11),
    ("rmsnorm", {"target": "trt"}, 16)])
def test_quantizes_through_the_gate(models, kind, flags, floor):
    """Measured (8 noise samples): sub-LN 18.5 / 10.1 / 8.9 / 19.2 dB, RMSNorm 17.8 / 14.3 /
    19.7 dB (W8/A8, --lis, --pts --lis, trt)."""
    result = onnxvq.quantize(models[kind], None, QuantConfig(**CALIB, **flags))
    assert result.fidelity["outputs"][0]["sqnr_db"] > floor


def test_pts_on_rmsnorms_is_refused_by_name(models, caplog):
    with pytest.raises(UnsupportedModelError, match="--pts cannot apply: the model has no "
                       "LayerNormalization .*its 5 RMSNorms"):
        onnxvq.quantize(models["rmsnorm"], None, QuantConfig(pts=True, **CALIB))
    with caplog.at_level("WARNING", logger="onnxvq.quantizer.flags"):
        result = onnxvq.quantize(models["rmsnorm"], None, QuantConfig(pts=True, lis=True, **CALIB))
    assert "--pts did nothing" in caplog.text and "5 RMSNorms" in caplog.text
    ops = {n.op_type for n in result.model.graph.node}
    assert "LogIntSoftmax" in ops or "LogIntAttention" in ops
    assert not ops & {"IntLayerNorm", "AddIntLayerNorm"}


def test_queries_max_pooled_over_the_token_map_trace_to_their_projection():
    """SAM2's HieraDet pools q at each stage transition with a MaxPool2d over the tokens laid
    out as a [B, C, H, W] map; before, those attentions (3 of 5) were not found."""
    import numpy as np
    import onnx

    from onnxvq.models.onnx_builder import GraphBuilder, float_input
    from onnxvq.recognise.attention import trace_linear

    b = GraphBuilder(17)
    w = np.random.default_rng(1).standard_normal((16, 16)).astype(np.float32)
    q = b.op("MatMul", "x", b.weight("w", w))  # [2, 16 tokens, 16]
    grid = b.op("Reshape", b.op("Transpose", q, perm=[0, 2, 1]), b.const([2, 16, 4, 4],
                                                                         np.int64))
    pooled = b.op("MaxPool", grid, kernel_shape=[2, 2], strides=[2, 2])
    out = b.op("Transpose", b.op("Reshape", pooled, b.const([2, 16, 4], np.int64)), perm=[0, 2, 1])
    model = b.build([float_input("x", [2, 16, 16])], [float_input(out, [2, 4, 16])], "g")
    onnx.checker.check_model(model)
    found = trace_linear(to_graph(model).outputs[0])
    assert found is not None and found.op == "MatMul" and found.inputs[0].name == "x"


def test_an_opset_23_rmsnormalization_node_is_an_rmsnorm():
    """The one-node form (opset 23) beside the decomposition: the same unit, the same walks."""
    import numpy as np
    import onnx

    from onnxvq.models.onnx_builder import GraphBuilder, float_input

    b = GraphBuilder(23)
    gamma = b.weight("g", np.full(16, 1.5, np.float32))
    out = b.op("RMSNormalization", "x", gamma, axis=-1, epsilon=1e-6)
    model = b.build([float_input("x", [2, 8, 16])], [float_input(out, [2, 8, 16])], "g")
    onnx.checker.check_model(model)
    (rms,) = recognise(to_graph(model)).rmsnorms
    assert (rms.input, rms.output, rms.channels) == ("x", out, 16)


def test_queries_under_an_rmsnorm_trace_to_their_projection():
    """Gemma4 RMSNorms q, k and v between the projection and the attention MatMuls."""
    import numpy as np
    import onnx

    from onnxvq.models.onnx_builder import GraphBuilder, float_input
    from onnxvq.recognise.attention import trace_linear

    b = GraphBuilder(20)
    w = np.random.default_rng(1).standard_normal((16, 16)).astype(np.float32)
    q = b.op("MatMul", "x", b.weight("w", w))
    mean = b.reduce_mean(b.op("Pow", q, b.const(2.0)), [-1])
    normed = b.op("Mul", q, b.op("Reciprocal", b.op("Sqrt", b.op("Add", mean, b.const(1e-6)))))
    out = b.op("Mul", normed, b.weight("g", np.full(16, 1.5, np.float32)))
    model = b.build([float_input("x", [2, 8, 16])], [float_input(out, [2, 8, 16])], "g")
    onnx.checker.check_model(model)
    graph = to_graph(model)
    found = trace_linear(graph.outputs[0])
    assert found is not None and found.op == "MatMul"
    assert len(recognise(graph).rmsnorms) == 1


def test_inspect_cli_shows_the_rmsnorms_only_where_there_are_any(models, tmp_path):
    from typer.testing import CliRunner

    from onnxvq.cli.app import app
    from onnxvq.core.graph import save_model

    rows = {}
    for kind in ("rmsnorm", "subln"):
        path = save_model(models[kind], tmp_path / f"{kind}.onnx")
        result = CliRunner().invoke(app, ["inspect", str(path)])
        assert result.exit_code == 0, result.output
        rows[kind] = [line for line in result.output.splitlines() if "rmsnorms" in line]
    assert len(rows["rmsnorm"]) == 1 and "5" in rows["rmsnorm"][0] and rows["subln"] == []
