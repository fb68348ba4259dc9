"""Fold a constant scale after a quantized MatMul into the scale of one operand's DequantizeLinear.

    MatMul(DQ(a, s_a, z_a), DQ(b, s_b, z_b)) ─Mul(c)    ->    MatMul(DQ(a), DQ(b, c·s_b, z_b))

The attention scores' 1/√d (canonicalised to one Mul on Q·Kᵀ) then costs no separate pass over
the [B, H, N, N] scores: ONNX Runtime folds both DQ scales into its MatMulIntegerToFloat.

Matches: Mul(MatMul(DQ, DQ), c), c a positive scalar constant, the MatMul read only by the Mul.
Refuses: a DQ of `b` with per-axis or non-constant scale, or read by another node as well.
Emits:   the MatMul with `b`'s DQ scaled by c (exact in real arithmetic:
         (q - z)·(c·s) = c·((q - z)·s); in float32 the product rounds once instead of twice).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import const_value, producer, scalar
from onnxvq.passes.ort_domain import rewire


@dataclass
class _Scaled:
    mul: gs.Node
    matmul: gs.Node
    dq: gs.Node
    c: float


class FoldScaleIntoDequantize(RewritePass):
    id = "fold-scale-into-dequantize"
    matches = "Mul(MatMul(DQ(a), DQ(b)), c), c a positive scalar"
    emits = "MatMul(DQ(a), DQ(b, c·s_b))"
    anchor_ops = ("Mul",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _Scaled | None:
        for i in (0, 1):
            c, mm = scalar(node.inputs[1 - i]), producer(node.inputs[i])
            if c is None or mm is None or mm.op != "MatMul":
                continue
            dqs = [producer(t) for t in mm.inputs]
            if all(d is not None and d.op == "DequantizeLinear" for d in dqs):
                return _Scaled(node, mm, dqs[1], c)
        return None

    def check(self, graph: gs.Graph, m: _Scaled) -> str | None:
        if not m.c > 0:
            return "scale is not positive"
        if len(m.matmul.outputs[0].outputs) != 1 or m.matmul.outputs[0] in graph.outputs:
            return "MatMul output is read elsewhere too"
        s = const_value(m.dq.inputs[1])
        if s is None or s.size != 1:
            return "per-axis or non-constant DequantizeLinear scale"
        if len(m.dq.outputs[0].outputs) != 1:
            return "the DequantizeLinear feeds other nodes"
        return None

    def rewrite(self, graph: gs.Graph, m: _Scaled, ctx: PassContext) -> None:
        s = const_value(m.dq.inputs[1]).astype(np.float32)
        m.dq.inputs[1] = gs.Constant(f"{m.dq.name}/scale_folded",
                                     np.asarray(s * np.float32(m.c), dtype=np.float32))
        rewire(m.mul.outputs[0], m.matmul.outputs[0], graph)
        m.mul.outputs.clear()
