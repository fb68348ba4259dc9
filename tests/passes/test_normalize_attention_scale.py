"""normalize-attention-scale: every exporter's attention scale becomes one Mul after Q·Kᵀ."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from passtools import make_model, ops, reasons, run_pass

from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.passes.normalize_attention_scale import NormalizeAttentionScale


@pytest.mark.parametrize("scale", ["div_scores", "sqrt_qk"])
@pytest.mark.parametrize("qkv", ["packed", "packed_split", "separate"])
def test_scale_becomes_one_mul_after_the_scores(scale, qkv):
    cfg = TinyViTConfig(depth=2, scale=scale, qkv=qkv)
    model = build_tiny_vit(cfg)
    out, res, numeric = run_pass(NormalizeAttentionScale(), model)
    assert res.applied == cfg.depth and res.refused == []
    # div_scores: a Div becomes a Mul; sqrt_qk: the Muls on q and k become one Mul
    delta = {"div_scores": {"Div": -1, "Mul": 1}, "sqrt_qk": {"Mul": -1}}[scale]
    for op, d in delta.items():
        assert ops(out)[op] == ops(model)[op] + d * cfg.depth
    by_output = {o: n for n in out.graph.node for o in n.output}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in out.graph.initializer}
    for sm in (n for n in out.graph.node if n.op_type == "Softmax"):
        mul = by_output[sm.input[0]]
        assert mul.op_type == "Mul" and by_output[mul.input[0]].op_type == "MatMul"
        np.testing.assert_allclose(inits[mul.input[1]], (cfg.dim // cfg.heads) ** -0.5, rtol=1e-6)
    assert numeric.max_abs_diff <= 1e-4


def test_already_canonical_is_left_alone():
    model = build_tiny_vit(TinyViTConfig(depth=2, scale="mul_scores"))
    out, res, _ = run_pass(NormalizeAttentionScale(), model)
    assert res.applied == 0 and reasons(res) == ["already canonical"] * 2
    assert ops(out) == ops(model)


def test_an_unscaled_attention_is_refused():
    nodes = [helper.make_node("MatMul", ["q", "k"], ["s"]),
             helper.make_node("Softmax", ["s"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    model = make_model(nodes, [("q", [2, 4, 8]), ("k", [2, 8, 4]), ("v", [2, 4, 8])],
                       [("y", [2, 4, 8])])
    out, res, _ = run_pass(NormalizeAttentionScale(), model)
    assert res.applied == 0 and reasons(res) == ["no scale found (scale 1)"]
    assert ops(out) == ops(model)


def test_scales_on_q_and_k_behind_layout_ops_merge():
    model = build_tiny_vit(TinyViTConfig(depth=1, scale="sqrt_qk"))
    out, res, numeric = run_pass(NormalizeAttentionScale(), model)
    assert res.applied == 1 and ops(out)["Mul"] == ops(model)["Mul"] - 1
    assert numeric.max_abs_diff <= 1e-5
