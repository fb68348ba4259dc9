"""Fold the constant rescale of integer sums into the QuantizeLinear that reads them.

    n ─Cast─Mul(c)─[layout]─QuantizeLinear(s, z)   ->   n ─Cast─[layout]─QuantizeLinear(s / c, z)

`--lis` rescales LogIntMatMul's integer sums (Cast → Mul(s_v·2^-M)) only to quantize them again
for the out-projection; the Mul is one more pass over the [B, H, N, D] tensor for nothing.

Matches: QuantizeLinear(L(Mul(Cast(n), c)), s, z), L zero or more single-reader Transpose/
         Reshape/Squeeze/Unsqueeze (they commute with a scalar factor), c a positive scalar
         constant, s per-tensor, the Mul read only by that chain. Only after a Cast: a float Mul
         before a quantizer can be part of a pattern ORT fuses (GELU's 0.5), which folding it
         would break.
Refuses: a non-positive or non-scalar c, a per-axis s, a Mul read by anything else.
Emits:   QuantizeLinear(x, s / c, z). Equal in real arithmetic (x·c / s = x / (s / c)); in float32
         the quotient rounds differently in the last bit, so a value within an ulp of a rounding
         midpoint can land on the neighbouring code (tested: under 0.1 % of codes, by one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import const_value, producer, scalar

_LAYOUT = ("Transpose", "Reshape", "Squeeze", "Unsqueeze")


@dataclass
class _Scaled:
    q: gs.Node
    mul: gs.Node
    x: gs.Tensor
    c: float


class FoldScaleIntoQuantize(RewritePass):
    id = "fold-scale-into-quantize"
    matches = "QuantizeLinear(Mul(x, c), s, z), c a positive scalar"
    emits = "QuantizeLinear(x, s / c, z)"
    anchor_ops = ("QuantizeLinear",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _Scaled | None:
        mul = producer(node.inputs[0])
        while mul is not None and mul.op in _LAYOUT and len(mul.outputs[0].outputs) == 1:
            mul = producer(mul.inputs[0])
        if mul is None or mul.op != "Mul":
            return None
        for i in (0, 1):
            c = scalar(mul.inputs[1 - i])
            cast = producer(mul.inputs[i])
            if c is not None and cast is not None and cast.op == "Cast":
                return _Scaled(node, mul, mul.inputs[i], c)
        return None

    def check(self, graph: gs.Graph, m: _Scaled) -> str | None:
        if not m.c > 0:
            return "scale is not positive"
        s = const_value(m.q.inputs[1])
        if s is None or s.size != 1:
            return "per-axis or non-constant quantization scale"
        if len(m.mul.outputs[0].outputs) != 1 or m.mul.outputs[0] in graph.outputs:
            return "the Mul's output is read elsewhere too"
        return None

    def rewrite(self, graph: gs.Graph, m: _Scaled, ctx: PassContext) -> None:
        s = np.float32(const_value(m.q.inputs[1]).reshape(()))
        m.q.inputs[1] = gs.Constant(f"{m.q.name}/scale_folded",
                                    np.asarray(s / np.float32(m.c), dtype=np.float32))
        reader = m.mul.outputs[0].outputs[0]
        reader.inputs[[i for i, t in enumerate(reader.inputs) if t is m.mul.outputs[0]][0]] = m.x
