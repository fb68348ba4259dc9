"""Keep an activation·activation MatMul integer when its output is requantized to another type.

ONNX Runtime's QDQ selector turns DQ(a)·DQ(b) → Q into QLinearMatMul when it can. In the fully
quantized DeiT-S, where the Q·Kᵀ scores (their scale folded into K's DQ) are requantized to int8
for LogIntSoftmax, it left all 12 as float MatMuls over dequantized inputs (ORT 1.32; a small
isolated graph of the same form does fuse, so the cause is contextual). This pass writes the
integer GEMM explicitly instead of depending on the selector:

    a_q ─DQ─┐                                    a_q ─┐
            MatMul ─Q(int8)        ->                  MatMulIntegerToFloat ─Q(int8)
    b_q ─DQ─┘                                    b_q ─┘

Matches: MatMul(DQ(a_q), DQ(b_q)) of two per-tensor 8-bit operands, each DQ read only by it,
         the MatMul read only by QuantizeLinear(s) whose integer type differs from a_q's, or
         through Adds of constants (attention biases before --lis's int8 scores) read only by
         such QuantizeLinears; the Adds stay, after the integer GEMM.
Refuses: per-axis or non-constant parameters.
Emits:   com.microsoft MatMulIntegerToFloat(a_q, b_q, s_a, s_b, z_a, z_b): the same int32 sums.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import const_value, producer
from onnxvq.passes.ort_domain import MS_DOMAIN, import_ms_domain, rewire


class OrtMixedQMatMul(RewritePass):
    id = "ort-mixed-qmatmul"
    matches = "DQ·DQ MatMul requantized to another integer type"
    emits = "com.microsoft MatMulIntegerToFloat"
    anchor_ops = ("MatMul",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> list[gs.Node] | None:
        dqs = [producer(t) for t in node.inputs[:2]]
        if not all(d is not None and d.op == "DequantizeLinear" for d in dqs):
            return None
        readers = _quantizers(graph, node.outputs[0])
        if not readers or any(r.op != "QuantizeLinear" or len(r.inputs) < 3 for r in readers):
            return None
        zq = [const_value(r.inputs[2]) for r in readers]
        za = const_value(dqs[0].inputs[2]) if len(dqs[0].inputs) > 2 else None
        if za is None or any(z is None or z.dtype == za.dtype for z in zq):
            return None
        return [node, *dqs]

    def check(self, graph: gs.Graph, m: list[gs.Node]) -> str | None:
        for d in m[1:]:
            s = const_value(d.inputs[1])
            z = const_value(d.inputs[2]) if len(d.inputs) > 2 else None
            if s is None or z is None or s.size != 1 or z.size != 1:
                return "per-axis or non-constant operand parameters"
            if z.dtype not in (np.uint8, np.int8):
                return "operand is not 8-bit"
            if len(d.outputs[0].outputs) != 1:
                return "a DequantizeLinear feeds other nodes too"
        if m[0].outputs[0] in graph.outputs:
            return "MatMul output is a graph output"
        return None

    def rewrite(self, graph: gs.Graph, m: list[gs.Node], ctx: PassContext) -> None:
        import_ms_domain(graph)
        mm, da, db = m
        y = gs.Variable(f"{mm.name}/integer", dtype=np.float32, shape=mm.outputs[0].shape)
        graph.nodes.append(gs.Node(
            "MatMulIntegerToFloat", name=f"{mm.name}/MatMulIntegerToFloat", domain=MS_DOMAIN,
            inputs=[da.inputs[0], db.inputs[0], da.inputs[1], db.inputs[1], da.inputs[2],
                    db.inputs[2]], outputs=[y]))
        rewire(mm.outputs[0], y, graph)
        mm.outputs.clear()


def _quantizers(graph: gs.Graph, t: gs.Tensor) -> list[gs.Node]:
    """The readers of `t`, each Add of a constant (not a graph output) standing for its own
    readers, through a chain of such Adds (relative positions, then a mask)."""
    out = []
    for r in t.outputs:
        side = [const_value(i) is not None for i in r.inputs] if r.op == "Add" else []
        if side.count(True) == 1 and r.outputs[0] not in graph.outputs and r.outputs[0].outputs:
            out += _quantizers(graph, r.outputs[0])
        else:
            out.append(r)
    return out
