"""Drop the NaN guard SDPA decompositions put after the attention Softmax.

Matches: Where(IsNaN(p), 0, p) with p = Softmax(...) (dynamo export of scaled_dot_product_attention;
         the guard zeroes the rows of a query whose every key is masked with -inf).
Refuses: a replacement value other than a constant 0.
Emits:   p. An image ViT never masks a whole row, so the guard never fires: the rewrite is
         numerically neutral for finite scores (the pipeline's numeric check confirms it), and the
         Softmax output again feeds A·V directly, as the recogniser and the LIS pass expect.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from onnxvq.core.edit import bypass
from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import const_value, producer


@dataclass
class _Guard:
    where: gs.Node
    isnan: gs.Node
    probs: gs.Tensor


class RemoveSoftmaxNanGuard(RewritePass):
    id = "remove-softmax-nan-guard"
    matches = "Where(IsNaN(Softmax), 0, Softmax)"
    emits = "Softmax output"
    anchor_ops = ("Where",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _Guard | None:
        cond, _, value = node.inputs
        isnan = producer(cond)
        if isnan is None or isnan.op != "IsNaN" or isnan.inputs[0] is not value:
            return None
        soft = producer(value)
        if soft is None or soft.op != "Softmax":
            return None
        return _Guard(node, isnan, value)

    def check(self, graph: gs.Graph, m: _Guard) -> str | None:
        zero = const_value(m.where.inputs[1])
        if zero is None or zero.size != 1 or float(zero.reshape(-1)[0]) != 0.0:
            return "guard replaces NaN rows with something other than 0"
        return None

    def rewrite(self, graph: gs.Graph, m: _Guard, ctx: PassContext) -> None:
        bypass(m.where, m.probs, graph)
        m.isnan.outputs.clear()
