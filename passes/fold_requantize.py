"""Drop a QuantizeLinear that re-quantizes a DequantizeLinear's output with the same parameters.

Matches: QuantizeLinear(DequantizeLinear(q, s, z), s, z), per-tensor, same scale, zero point and
         integer type (IntLayerNorm's output codes feeding a linear whose input site reuses the
         LayerNorm output's qparams).
Refuses: different scales/zero points or types (a real requantization), per-axis parameters.
Emits:   q, straight to the Q's consumers. Exact: Q(DQ(q)) = q when the parameters match. ONNX
         Runtime runs two ops fewer; TensorRT wants DQ only in front of GEMMs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.edit import bypass
from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import const_value, producer


@dataclass
class _Pair:
    dq: gs.Node
    q: gs.Node


class FoldRequantize(RewritePass):
    id = "fold-requantize"
    matches = "QuantizeLinear(DequantizeLinear(q, s, z), s, z)"
    emits = "q"
    anchor_ops = ("QuantizeLinear",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _Pair | None:
        dq = producer(node.inputs[0])
        if dq is None or dq.op != "DequantizeLinear" or len(dq.inputs) < 3 or len(node.inputs) < 3:
            return None
        return _Pair(dq, node)

    def check(self, graph: gs.Graph, m: _Pair) -> str | None:
        s1, z1 = const_value(m.dq.inputs[1]), const_value(m.dq.inputs[2])
        s2, z2 = const_value(m.q.inputs[1]), const_value(m.q.inputs[2])
        if any(v is None or v.size != 1 for v in (s1, z1, s2, z2)):
            return "per-axis or non-constant parameters"
        if z1.dtype != z2.dtype or not (np.array_equal(s1, s2) and np.array_equal(z1, z2)):
            return "a real requantization (different scale, zero point or type)"
        return None

    def rewrite(self, graph: gs.Graph, m: _Pair, ctx: PassContext) -> None:
        bypass(m.q, m.dq.inputs[0])
