"""sensitivity: per-point SQNR and one-block-at-a-time damage rank a mis-scaled layer first."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxvq.core.config import QuantConfig
from onnxvq.core.runtime import make_session, random_inputs
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.quantizer.run import quantize
from onnxvq.verify.sensitivity import (
    block_damage,
    block_nodes,
    canonical_structure,
    keep_quantized,
    layer_sqnr,
    probes,
)

BROKEN_BLOCK = 1


@pytest.fixture(scope="module")
def setup():
    fp32 = build_tiny_vit(TinyViTConfig(depth=3))
    result = quantize(fp32, None, QuantConfig(calib_size=16, batch_size=8))
    canonical, structure = canonical_structure(fp32)
    return fp32, result, canonical, structure


def broken(result, structure, block: int = BROKEN_BLOCK) -> onnx.ModelProto:
    """The quantized model with the scale of block `block`'s fc1 input multiplied by 100."""
    fc1 = structure.blocks[block].mlp.fc1.node
    q = onnx.ModelProto()
    q.CopyFrom(result.model)
    tensor = next(s.tensor for s in result.plan.activations if fc1 in s.consumers)
    init = next(i for i in q.graph.initializer if i.name == f"{tensor}/scale")
    value = onnx.numpy_helper.to_array(init) * np.float32(100)
    init.CopyFrom(onnx.numpy_helper.from_array(value, init.name))
    return q


def test_probes_cover_the_structure(setup):
    _, _, canonical, s = setup
    points = probes(canonical, s)
    kinds = [p.kind for p in points]
    assert kinds.count("attention-probs") == 3 and kinds.count("mlp") == 3
    assert kinds.count("layernorm") == len(s.layernorms) and kinds.count("residual") == 6
    assert kinds[-1] == "output" and [p.order for p in points] == sorted(p.order for p in points)
    assert {p.block for p in points if p.kind == "mlp"} == {0, 1, 2}


def test_fp32_against_itself_is_lossless(setup):
    fp32, _, canonical, _ = setup
    points = layer_sqnr(fp32, canonical, samples=4, batch_size=4)
    assert all(p.sqnr_db > 100 for p in points) and all(p.cosine > 0.999999 for p in points)


def test_mis_scaled_layer_ranks_first(setup):
    fp32, result, canonical, s = setup
    healthy = layer_sqnr((canonical, s), result.model, samples=8)
    assert min(p.sqnr_db for p in healthy) > 10
    points = layer_sqnr((canonical, s), broken(result, s), samples=8)
    worst = points[0]
    assert (worst.probe.block, worst.probe.kind) == (BROKEN_BLOCK, "mlp")
    assert [p.sqnr_db for p in points] == sorted(p.sqnr_db for p in points)
    before = [p for p in points if p.probe.block == 0]
    assert all(p.sqnr_db > worst.sqnr_db + 10 for p in before)  # upstream is untouched


def test_block_damage_ranks_mis_scaled_block_first(setup):
    fp32, result, _, s = setup
    ticks = []
    ranked = block_damage(fp32, broken(result, s), samples=8, progress=ticks.append)
    assert [u.unit for u in ranked][0] == f"block {BROKEN_BLOCK}"
    assert ranked[0].sqnr_db < ranked[1].sqnr_db - 10
    assert sorted(u.unit for u in ranked) == ["block 0", "block 1", "block 2", "rest"]
    assert ticks == [1] * 4


def test_keep_quantized_all_or_nothing(setup):
    _, result, canonical, s = setup
    every = {n.name for n in canonical.graph.node}
    feeds = random_inputs(make_session(canonical), batch=2, seed=3)
    ref = make_session(canonical).run(None, feeds)[0]
    q = make_session(result.model).run(None, feeds)[0]
    none = keep_quantized(result.model, canonical, set())
    assert not [n for n in none.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    np.testing.assert_allclose(make_session(none).run(None, feeds)[0], ref, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(
        make_session(keep_quantized(result.model, canonical, every)).run(None, feeds)[0], q)
    keep = block_nodes(s.blocks[0])
    one = keep_quantized(result.model, canonical, keep)
    dq_out = {n.output[0] for n in one.graph.node if n.op_type == "DequantizeLinear"}
    # integer kernels of the ORT lowering are named "<FP32 node>/MatMulIntegerToFloat"
    users = {n.name.split("/")[0] for n in one.graph.node if dq_out.intersection(n.input) or
             n.op_type in ("MatMulIntegerToFloat", "QuantizedLinear", "QuantizedLinearQuantize",
                           "QuantizedLinearGeluQuantize", "QLinearAttention")}
    assert users and users <= keep  # only block 0's nodes read dequantized tensors
    assert len(users) == 5  # qkv, out-proj, fc1, fc2 and the fused attention (its Softmax's name)


def test_keep_quantized_restores_integer_layernorm_and_softmax():
    """PTS/LIS replace LayerNorm and Softmax+A.V by custom ops under new names; reverting finds
    them through the FP32 outputs they still produce."""
    fp32 = build_tiny_vit(TinyViTConfig(depth=2))
    canonical, s = canonical_structure(fp32)
    q = quantize(fp32, None, QuantConfig(calib_size=8, batch_size=8, pts=True, lis=True)).model
    custom = {"IntLayerNorm", "LogIntSoftmax", "LogIntMatMul", "LogIntAttention"}
    feeds = random_inputs(make_session(canonical), batch=2, seed=1)
    none = keep_quantized(q, canonical, set())
    assert not custom & {n.op_type for n in none.graph.node}
    np.testing.assert_array_equal(make_session(none).run(None, feeds)[0],
                                  make_session(canonical).run(None, feeds)[0])
    one = keep_quantized(q, canonical, block_nodes(s.blocks[1]))
    ops = [n.op_type for n in one.graph.node if n.op_type in custom]
    assert sorted(ops) == ["IntLayerNorm", "IntLayerNorm", "LogIntAttention"]
