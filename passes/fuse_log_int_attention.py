"""Fuse an FQ-ViT (--lis) attention, head split to head merge, into one com.onnxvq.LogIntAttention.

    X=Q(qkv)─Transpose─Gather/Split 0──DQ─┐                                 X=Q(qkv)
             ├─ 1 ─Transpose───────────DQ─MatMul─[+B]─Q(int8)─LogIntSoftmax─┐ ──LogIntAttention──
             └─ 2 ──────────────────────────────────────────LogIntMatMul  ->  (uint8 [B, N, H·D])
                                 ─Cast─Mul(step)─Transpose─Reshape─Q(s_o)

Matches: a LogIntSoftmax whose int8 input quantizes (zero point 0) a MatMul(DQ(q), DQ(kᵀ)) of
         pieces 0 and 1 of one packed uint8 code tensor [B, N, 3, H, D], read only by a
         LogIntMatMul with piece 2, whose int64 output goes Cast(FLOAT), Mul(scalar step), then
         the head merge (Transpose [0,2,1,3], Reshape [B, N, H·D]) to one per-tensor uint8
         QuantizeLinear (the output projection's input); see passes/attention_walk.py.
         Between the scores and their quantizer, constant additive biases B as QLinearAttention
         takes them (Swin / BEiT relative positions, attention biases, a constant window mask).
Refuses: int32 (wide) score codes (Swin's shifted windows: the -100 mask widens the calibrated
         range), LIS codes above 4 bits, a LogIntMatMul whose bits or octave_steps differ from
         the softmax's, two bias terms nonzero at one entry (relative positions and a mask: the
         unfused graph rounds after each Add), anything else QLinearAttention's pass refuses
         (a bias that is not a constant, non-hoisted q/k/v, a float output).
Emits:   LogIntAttention(X) with the softmax constants, the scores' scale and the accumulator's
         step as attributes, the biases summed into its float32 `bias` [W, 1|H, N, N]. Bit-exact
         with the graph after ort-mixed-qmatmul (whose MatMulIntegerToFloat scores are
         f32(S) * (s_q * s_k) as here, then the float Add of the bias, then the int8
         QuantizeLinear: one rounding each) and the native kernels.
Speed:   fires on every match; measured 0.88-0.93x of the unfused lowering on the tiny ViT at
         batch 1 and 16, 0.86x / 0.82x on DeiT-S at batch 1 / 8 (README, speed section).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import const_value, producer, scalar
from onnxvq.passes.attention_walk import AttentionUnit, Probs, find_attention, scale_zp
from onnxvq.plugins.ops import make_attention_node

LIS_ATTRS = ("x0", "b", "c", "n", "bits", "octave_steps")


class FuseLogIntAttention(RewritePass):
    id = "fuse-log-int-attention"
    matches = "LIS attention from packed QKV codes to the merged, quantized output"
    emits = "com.onnxvq LogIntAttention"
    anchor_ops = ("LogIntSoftmax",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> AttentionUnit | str:
        return find_attention(graph, node, _lis_path, allow_bias=True)

    def check(self, graph: gs.Graph, m: AttentionUnit | str) -> str | None:
        if isinstance(m, str):
            return m
        return None if m.bias_exact else ("two attention biases are nonzero at one entry: the "
                                          "unfused Adds round twice, one summed bias once")

    def rewrite(self, graph: gs.Graph, m: AttentionUnit, ctx: PassContext) -> None:
        sm, step = m.probs.nodes["softmax"], m.probs.nodes["step"]
        attrs = dict(m.common, scores_scale=m.probs.nodes["scores_scale"],
                     acc_scale=float(np.float32(step)),
                     **{k: int(sm.attrs[k]) for k in LIS_ATTRS})
        y = make_attention_node(graph, "LogIntAttention", m.x, attrs,
                                name=f"{m.anchor.name}/LogIntAttention",
                                out_shape=m.out_q.outputs[0].shape, bias=m.bias)
        m.replace_output(graph, y)


def _lis_path(graph: gs.Graph, sm: gs.Node) -> Probs | str:
    """Scores, V and the rescaled product around a LogIntSoftmax, or why not."""
    q = producer(sm.inputs[0])
    p = None if q is None or q.op != "QuantizeLinear" else scale_zp(q)
    if p is None or const_value(q.inputs[2]).dtype != np.int8 or p[1] != 0:
        return "scores are not int8 codes with zero point 0 (int32 wide scores)"
    if len(sm.inputs[0].outputs) != 1 or int(sm.attrs.get("bits", 4)) > 4:
        return "score codes read elsewhere, or LIS codes above 4 bits"
    readers = sm.outputs[0].outputs
    mm = readers[0] if len(readers) == 1 else None
    if mm is None or mm.op != "LogIntMatMul" or sm.outputs[0] in graph.outputs:
        return "log codes are not read by one LogIntMatMul only"
    if any(int(mm.attrs.get(k, d)) != int(sm.attrs.get(k, d))
           for k, d in (("bits", 4), ("octave_steps", 1))):
        return "LogIntMatMul's bits or octave_steps differ from the softmax's"
    cast = mm.outputs[0].outputs[0] if len(mm.outputs[0].outputs) == 1 else None
    mul = cast.outputs[0].outputs[0] if cast is not None and cast.op == "Cast" and \
        len(cast.outputs[0].outputs) == 1 else None
    step = None if mul is None or mul.op != "Mul" else scalar(mul.inputs[1])
    if step is None or mul.inputs[0] is not cast.outputs[0] or cast.attrs.get("to") != 1:
        return "LogIntMatMul output is not Cast(FLOAT) then Mul(scalar step)"
    return Probs(q.inputs[0], mm.inputs[1], 0.0, mul.outputs[0],
                 {"softmax": sm, "step": step, "scores_scale": float(p[0]),
                  "v_zero_point": int(mm.attrs.get("zero_point", 0))})
