"""Compose kᵀ's last-two-axes Transpose with the head-split Transpose before it.

    k [B, N, H, D] ─Transpose [0,2,1,3]─Transpose [0,1,3,2]─      ->      k ─Transpose [0,2,3,1]─

Hugging Face's SDPA attention transposes k to [B, H, N, D] and SDPA then transposes its last two
axes; TorchScript exports the two as one Transpose [0,2,3,1], dynamo as two (after
fold-reshaped-transpose), which the separate-projection matching (attention_separate.py) does
not read.

Matches: Transpose(Transpose(x, p), q) with q swapping the last two axes of a rank >= 3 tensor,
         the inner output read only by the outer and not a graph output (nor the outer's, when
         the two cancel).
Refuses: nothing: any other pair is not this pattern (not matched).
Emits:   Transpose(x, [p[q[i]] for i]) writing the outer's output (x itself when that is the
         identity). A pure data movement: bit-exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from onnxvq.core.edit import bypass
from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import producer


@dataclass
class _Pair:
    inner: gs.Node
    outer: gs.Node
    perm: list[int]


class ComposeKeyTranspose(RewritePass):
    id = "compose-key-transpose"
    matches = "Transpose(Transpose(x, p), last two axes swapped)"
    emits = "one Transpose(x)"
    anchor_ops = ("Transpose",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _Pair | None:
        q = list(node.attrs.get("perm", []))
        rank = len(q)
        if rank < 3 or q != [*range(rank - 2), rank - 1, rank - 2]:
            return None
        inner = producer(node.inputs[0])
        if inner is None or inner.op != "Transpose" or len(node.inputs[0].outputs) != 1 or \
                node.inputs[0] in graph.outputs:
            return None
        p = list(inner.attrs.get("perm", []))
        perm = [p[i] for i in q] if len(p) == rank else None
        if perm is None or (perm == list(range(rank)) and node.outputs[0] in graph.outputs):
            return None  # an identity pair writing a graph output stays (the output keeps its node)
        return _Pair(inner, node, perm)

    def rewrite(self, graph: gs.Graph, m: _Pair, ctx: PassContext) -> None:
        x = m.inner.inputs[0]
        if m.perm == list(range(len(m.perm))):
            bypass(m.outer, x, graph)
        else:
            m.outer.inputs[0] = x
            m.outer.attrs["perm"] = m.perm
        m.inner.outputs.clear()
