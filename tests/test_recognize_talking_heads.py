"""Talking-heads attention (CaiT) on a tiny ViT written in ONNX: a Linear over the heads mixes
the scores before the Softmax (timm's proj_l) and the probabilities after it (proj_w), each
between two Transposes that move the head axis last. Before, the Transpose on the score path
hid the attention (2 of CaiT's 4 found). The real timm export: tests/models/test_families.py."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

import onnxvq
from onnxvq.core.config import QuantConfig
from onnxvq.core.errors import UnsupportedModelError
from onnxvq.models.onnx_builder import GraphBuilder, float_input
from onnxvq.models.tiny_variants import _split_heads
from onnxvq.models.tiny_vit import (
    TinyViTConfig,
    _activation,
    _head,
    _layernorm,
    _linear,
    _linear_weights,
    _patch_embed,
    make_weights,
)

CFG = TinyViTConfig()
CALIB = dict(calib_size=8, batch_size=4)
REASON = "Softmax output reaches A·V through other ops or has other consumers"


def _mix(b: GraphBuilder, w: dict, name: str, t: str) -> str:
    """[B, H, N, N] -> Linear over H -> [B, H, N, N] (x.permute(0, 2, 3, 1), Linear, back)."""
    mixed = _linear(b, w, name, b.op("Transpose", t, perm=[0, 2, 3, 1]))
    return b.op("Transpose", mixed, perm=[0, 3, 1, 2])


def build_talking_heads(cfg: TinyViTConfig = CFG):
    w = make_weights(cfg)
    rng = np.random.default_rng(cfg.seed + 2)
    b = GraphBuilder(cfg.opset)
    x = _patch_embed(b, cfg, w)
    for i in range(cfg.depth):
        pre = f"blocks.{i}."
        for name in ("attn.proj_l", "attn.proj_w"):
            w |= _linear_weights(rng, pre + name, cfg.heads, cfg.heads)
        q, k, v = _split_heads(b, cfg, w, pre, _layernorm(b, cfg, w, pre + "norm1", x))
        q = b.op("Mul", q, b.const(cfg.head_dim ** -0.5))
        scores = _mix(b, w, pre + "attn.proj_l", b.op("MatMul", q, b.op("Transpose", k,
                                                                         perm=[0, 1, 3, 2])))
        probs = _mix(b, w, pre + "attn.proj_w", b.op("Softmax", scores, axis=-1))
        out = b.op("Transpose", b.op("MatMul", probs, v), perm=[0, 2, 1, 3])
        out = b.op("Reshape", out, b.const([0, cfg.tokens, cfg.dim], np.int64))
        x = b.op("Add", x, _linear(b, w, pre + "attn.proj", out))
        hidden = _activation(b, cfg, _linear(b, w, pre + "mlp.fc1",
                                             _layernorm(b, cfg, w, pre + "norm2", x)))
        x = b.op("Add", x, _linear(b, w, pre + "mlp.fc2", hidden))
    _head(b, cfg, w, x)
    inputs = [float_input("input", ["batch", cfg.channels, cfg.image, cfg.image])]
    return b.build(inputs, [float_input("logits", ["batch", cfg.classes])], name="talking")


@pytest.fixture(scope="module")
def model():
    return build_talking_heads()


def test_talking_heads_attention_is_recognised(model):
    s = onnxvq.inspect(model).structure
    assert s.counts == dict(blocks=2, attentions=2, layernorms=5, mlps=2, residual_adds=4)
    # proj_l and proj_w of each block (the builder numbers its nodes by op type)
    assert [a.head_mixing for a in s.attentions] == [("MatMul_3", "MatMul_4"),
                                                      ("MatMul_11", "MatMul_12")]
    assert [(a.heads, a.head_dim, a.qkv, a.additive_bias) for a in s.attentions] == [
        (CFG.heads, CFG.head_dim, "packed", False)] * 2
    assert not s.unrecognised["MatMul"] and not s.unrecognised["Softmax"]
    assert {b.placement for b in s.blocks} == {"pre-norm"}


def test_w8a8_quantizes_the_mixing_linears_and_both_attention_products(model):
    result = onnxvq.quantize(model, None, QuantConfig(**CALIB))
    mixing = {n for a in result.structure.attentions for n in a.head_mixing}
    assert len(mixing) == 4 and mixing <= {w.node for w in result.plan.weights}
    roles = Counter(s.role for s in result.plan.activations)
    assert roles["scores"] == 4 and roles["probs"] == 2 and roles["values"] == 2
    assert result.fidelity["outputs"][0]["sqnr_db"] > 22  # measured 26.4 dB (8 noise samples)


def test_lis_is_refused_by_name_on_talking_heads(model, caplog):
    """The probabilities feed the mixing Linear, not A·V: LogIntMatMul cannot take them as log
    codes. --lis alone then applies nowhere (refused, nothing written); with --pts it is a
    warning and PTS applies."""
    with pytest.raises(UnsupportedModelError, match="--lis cannot apply"):
        onnxvq.quantize(model, None, QuantConfig(lis=True, **CALIB))
    result = onnxvq.quantize(model, None, QuantConfig(pts=True, lis=True, **CALIB))
    skipped = dict(result.plan.skipped)
    assert [skipped[a.softmax] for a in result.structure.attentions] == [REASON] * 2
    ops = Counter(n.op_type for n in result.model.graph.node)
    assert ops["LogIntSoftmax"] == 0 and ops["Softmax"] == 2
    assert ops["IntLayerNorm"] + ops["AddIntLayerNorm"] == 5
    assert "--lis did nothing" in caplog.text
    assert result.fidelity["outputs"][0]["problem"] is None
