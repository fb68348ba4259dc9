"""Fuse a quantized self-attention (head split to head merge) into one com.onnxvq.QLinearAttention.

    X=Q(qkv)─Transpose─Gather 0───────────DQ─┐                      X=Q(qkv) ──QLinearAttention──
                      ├Gather 1─Transpose─DQ─MatMul─Softmax─Q─DQ─┐     -> (uint8 [B, N, H·D])
                      └Gather 2───────────DQ────────────────────MatMul─Transpose─Reshape─Q(s_o)

Matches: a Softmax over the last axis whose input is MatMul(DQ(q), DQ(kᵀ)) (the 1/√d already in
         k's DQ scale, fold-scale-into-dequantize), q, k, v gathered from one packed uint8 code
         tensor [B, N, 3, H, D] (hoist-quantize-over-split; any Transpose + slice that gives
         [B, H, N, D], as MaxViT's) or [B, N, H, 3·D] (TinyViT; `qkv_layout` 1), the
         probabilities requantized to
         uint8, P·V's output merged (Transpose [0,2,1,3], Reshape to [B, N, H·D]) and quantized
         per-tensor to uint8 (the output projection's input).
         Between the scores and the Softmax, constant additive biases (attention_walk): Add of a
         constant [1|H, N, N] (Swin / BEiT / Data2Vec relative positions, LeViT / TinyViT /
         MaxViT attention biases) and Swin's shifted-window mask, Reshape [-1, W, H, N, N], Add
         of a constant [1, W, 1, N, N], Reshape back.
Refuses: a bias that is not a constant (the reason names it), anything else between the scores
         and the Softmax, scores not from the packed codes (cosine attention, per-head norms,
         non-hoisted quantizers, separate q/k/v projections), a float or per-axis merged output,
         non-static or too large shapes (head dim > 256), intermediates read elsewhere.
Emits:   QLinearAttention(X) with the zero points and float32 scales as attributes and the
         biases summed into one float32 tensor attribute `bias` [W, 1|H, N, N] (an attribute, not
         an input: an ONNX local function cannot take an omitted optional input); its output
         replaces the merged Q's codes. The bias is added to f32(S)·qk_scale, where the unfused
         graph adds it to the float MatMul of the dequantized q, kᵀ: same order, within noise.
         Not bit-exact: the integer products are exact, the float softmax rounds differently
         from ONNX Runtime's (a probability code moves by one where p / s_p is within ~1e-6 of
         a half-integer; measured effect in tests/passes).
Speed:   fires on every match: on every shape measured (tiny ViT D=16/32, N=65 to DeiT-S D=64,
         N=197, batch 1-16) the fused graph is faster than the unfused lowering (README, speed).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import const_value, producer
from onnxvq.passes.attention_walk import AttentionUnit, Probs, find_attention, scale_zp
from onnxvq.plugins.ops import make_attention_node


class FuseQLinearAttention(RewritePass):
    id = "fuse-qlinear-attention"
    matches = "quantized attention from packed QKV codes to the merged, quantized output"
    emits = "com.onnxvq QLinearAttention"
    anchor_ops = ("Softmax",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> AttentionUnit | str:
        return find_attention(graph, node, _probs_path, allow_bias=True)

    def check(self, graph: gs.Graph, m: AttentionUnit | str) -> str | None:
        return m if isinstance(m, str) else None

    def rewrite(self, graph: gs.Graph, m: AttentionUnit, ctx: PassContext) -> None:
        s_p, z_p = scale_zp(m.probs.nodes["probs_q"])
        attrs = dict(m.common, probs_scale=float(s_p), probs_zero_point=int(z_p),
                     acc_scale=float(np.float32(s_p) * np.float32(m.v_scale)))
        y = make_attention_node(graph, "QLinearAttention", m.x, attrs,
                                name=f"{m.anchor.name}/QLinearAttention",
                                out_shape=m.out_q.outputs[0].shape, bias=m.bias)
        m.replace_output(graph, y)


def _probs_path(graph: gs.Graph, softmax: gs.Node) -> Probs | str:
    """Scores, V and the P·V output around a Softmax whose output is requantized, or why not."""
    rank = len(softmax.inputs[0].shape or [0] * 4)
    if softmax.attrs.get("axis", -1) not in (-1, rank - 1):
        return "softmax is not over the last axis"
    readers = softmax.outputs[0].outputs
    if len(readers) != 1 or readers[0].op != "QuantizeLinear" or softmax.outputs[0] in \
            graph.outputs:
        return "attention probabilities are read in float"
    q = readers[0]
    dqs = q.outputs[0].outputs
    if len(dqs) != 1 or dqs[0].op != "DequantizeLinear" or len(dqs[0].outputs[0].outputs) != 1:
        return "quantized probabilities are read by more than P·V"
    pv = dqs[0].outputs[0].outputs[0]
    if pv.op != "MatMul" or pv.inputs[0] is not dqs[0].outputs[0]:
        return "quantized probabilities do not feed a P·V MatMul"
    p = scale_zp(q)
    if p is None or const_value(q.inputs[2]).dtype != np.uint8 or scale_zp(dqs[0]) != p:
        return "probabilities not quantized per-tensor to uint8"
    dv = producer(pv.inputs[1])
    v = None if dv is None or dv.op != "DequantizeLinear" else scale_zp(dv)
    if v is None or len(dv.outputs[0].outputs) != 1:
        return "V is not per-tensor dequantized codes read only by P·V"
    return Probs(softmax.inputs[0], dv.inputs[0], float(v[0]), pv.outputs[0],
                 {"probs_q": q, "v_zero_point": v[1]})
