"""Fuse an AddMulQuantizeLinear and the IntLayerNorm reading its codes (the --pts residual norm)
into one com.onnxvq AddIntLayerNorm.

    AddMulQuantizeLinear(a, b, M, s1, zp) ─┬─ PTS codes ── IntLayerNorm(alpha, γ, β) ── codes
                                           └─ sum (for the next residual)
        ->   AddIntLayerNorm(a, b, M, s1, zp, alpha, γ, β) -> (codes, sum)

Matches: an IntLayerNorm whose input is the codes output of an AddMulQuantizeLinear (what
         fuse-add-mul-quantize wrote, so this pass runs after it).
Refuses: PTS codes read by anything but this IntLayerNorm (or a graph output: they would no
         longer exist), and an IntLayerNorm whose zero_point is not the quantizer's constant
         zero point (the fused op reads one).
Emits:   AddIntLayerNorm writing the IntLayerNorm's output and the AddMulQuantizeLinear's sum,
         with the IntLayerNorm's attributes. Bit-exact: it is defined as the two ops in sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import const_value, producer
from onnxvq.plugins.ops import make_add_int_layer_norm_node

_ATTRS = ("zero_point", "epsilon", "gamma_shift", "output_dtype")


@dataclass
class _Pair:
    amq: gs.Node
    ln: gs.Node


class FuseAddIntLayerNorm(RewritePass):
    id = "fuse-add-int-layer-norm"
    matches = "AddMulQuantizeLinear → IntLayerNorm"
    emits = "com.onnxvq AddIntLayerNorm(a, b, M, s, zp, alpha, γ, β) -> (codes, sum)"
    anchor_ops = ("IntLayerNorm",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _Pair | None:
        amq = producer(node.inputs[0])
        if amq is None or amq.op != "AddMulQuantizeLinear" or amq.outputs[0] is not node.inputs[0]:
            return None
        return _Pair(amq, node)

    def check(self, graph: gs.Graph, m: _Pair) -> str | None:
        codes = m.amq.outputs[0]
        if len(codes.outputs) != 1 or codes in graph.outputs:
            return "the PTS codes are read by more than the IntLayerNorm"
        zp = const_value(m.amq.inputs[4])
        if zp is None or zp.size != 1 or int(zp.reshape(())) != int(m.ln.attrs.get("zero_point",
                                                                                      -999)):
            return "IntLayerNorm's zero_point is not the quantizer's constant zero point"
        return None

    def rewrite(self, graph: gs.Graph, m: _Pair, ctx: PassContext) -> None:
        a, b, mult, scale, zp = m.amq.inputs
        alpha, gamma, beta = m.ln.inputs[1:4]
        codes, total = m.ln.outputs[0], m.amq.outputs[1]
        attrs = {k: int(m.ln.attrs[k]) for k in _ATTRS if k in m.ln.attrs}
        name = f"{m.ln.name}/AddIntLayerNorm"
        for n in (m.ln, m.amq):
            n.outputs.clear()
        make_add_int_layer_norm_node(graph, a, b, mult, scale, zp, alpha, gamma, beta,
                                     attrs=attrs, name=name, codes=codes, total=total)
