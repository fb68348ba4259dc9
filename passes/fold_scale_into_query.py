"""Move the attention scale from the Q·Kᵀ product onto Q (for TensorRT).

Matches: Mul(MatMul(q, kᵀ), s) with s a constant scalar, the canonical form that
         normalize-attention-scale emits.
Refuses: a q tensor that feeds anything besides the scores MatMul (scaling it would change the other
         reader).
Emits:   MatMul(Mul(q, s), kᵀ). TensorRT's fused attention wants the scale applied to Q before the
         first batched MatMul; the quantizer then calibrates the scaled Q, so its Q/DQ sits directly
         on the MatMul input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.edit import bypass
from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import data_inputs, producer, scalar


@dataclass
class _Scaled:
    mul: gs.Node
    matmul: gs.Node
    scale: float


class FoldScaleIntoQuery(RewritePass):
    id = "fold-scale-into-query"
    matches = "Mul(MatMul(q, kᵀ), s) before an attention Softmax"
    emits = "MatMul(Mul(q, s), kᵀ)"
    anchor_ops = ("Mul",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _Scaled | None:
        if len(data_inputs(node)) != 1:
            return None
        mm = producer(data_inputs(node)[0])
        s = scalar(node.inputs[1]) if scalar(node.inputs[1]) is not None else scalar(node.inputs[0])
        if mm is None or mm.op != "MatMul" or len(data_inputs(mm)) != 2 or s is None:
            return None
        if not _leads_to_softmax(node.outputs[0]):
            return None
        return _Scaled(node, mm, s)

    def check(self, graph: gs.Graph, m: _Scaled) -> str | None:
        if len(m.matmul.outputs[0].outputs) != 1:
            return "scores feed more than the scale"
        if len(m.matmul.inputs[0].outputs) != 1:
            return "q has other consumers"
        return None

    def rewrite(self, graph: gs.Graph, m: _Scaled, ctx: PassContext) -> None:
        q = m.matmul.inputs[0]
        scaled_q = gs.Variable(f"{q.name}/scaled", dtype=q.dtype, shape=q.shape)
        const = gs.Constant(f"{m.matmul.name}/q_scale", np.array(m.scale, dtype=np.float32))
        graph.nodes.append(gs.Node("Mul", name=f"{m.matmul.name}/ScaleQ", inputs=[q, const],
                                   outputs=[scaled_q]))
        m.matmul.inputs[0] = scaled_q
        bypass(m.mul, m.matmul.outputs[0])


def _leads_to_softmax(t: gs.Tensor) -> bool:
    for _ in range(6):
        if len(t.outputs) != 1:
            return False
        c = t.outputs[0]
        if c.op == "Softmax":
            return True
        if c.op not in ("Add", "Reshape", "Cast"):
            return False
        t = c.outputs[0]
    return False
