"""Fuse Add → Mul(M) → QuantizeLinear, the --pts input of an IntLayerNorm (M = 2^-alpha_c), into
one com.onnxvq AddMulQuantizeLinear.

    Add(a, b) ─┬─ Mul(M) ── QuantizeLinear(s1, zp) ── PTS codes ── IntLayerNorm
               └─ (the sum, for the next residual)
        ->   AddMulQuantizeLinear(a, b, M, s1, zp) -> (codes, sum)

Matches: a per-tensor QuantizeLinear whose input is a Mul by a constant over the last axis (1-D,
         or a scalar with a known last dimension), read by nothing else, of a two-input Add.
Refuses: a per-axis or non-constant scale / zero point (or not uint8/int8), a Mul output read by
         anything but the QuantizeLinear, an M that is not 1-D over the last axis, and an Add
         whose operands broadcast other than over leading dimensions (or are unknown).
Emits:   AddMulQuantizeLinear writing the Add's output (the sum) and the QuantizeLinear's (the
         codes). Bit-exact: the same float32 add, multiply and IEEE division, rounded half to even.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import byte_quantizer_refusal, const_value, producer
from onnxvq.passes.fuse_add_layernorm_quantize import residual_operands
from onnxvq.plugins.ops import make_add_mul_quantize_linear_node


@dataclass
class _AddMulQ:
    add: gs.Node
    mul: gs.Node
    q: gs.Node
    m: np.ndarray | None


class FuseAddMulQuantize(RewritePass):
    id = "fuse-add-mul-quantize"
    matches = "Add → Mul(constant over the last axis) → QuantizeLinear"
    emits = "com.onnxvq AddMulQuantizeLinear(a, b, M, s, zp) -> (codes, sum)"
    anchor_ops = ("QuantizeLinear",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _AddMulQ | None:
        mul = producer(node.inputs[0])
        if mul is None or mul.op != "Mul" or len(mul.inputs) != 2:
            return None
        m = next((const_value(t) for t in mul.inputs if isinstance(t, gs.Constant)), None)
        x = next((t for t in mul.inputs if not isinstance(t, gs.Constant)), None)
        add = producer(x) if x is not None else None
        if add is None or add.op != "Add" or len(add.inputs) != 2:
            return None
        return _AddMulQ(add, mul, node, m)

    def check(self, graph: gs.Graph, m: _AddMulQ) -> str | None:
        reason = byte_quantizer_refusal(m.q)
        if reason:
            return reason
        mid = m.mul.outputs[0]
        if len(mid.outputs) != 1 or mid in graph.outputs:
            return "the Mul's output is read by more than the QuantizeLinear"
        shape = m.add.outputs[0].shape
        c = shape[-1] if shape and isinstance(shape[-1], int) else None
        if m.m is None or m.m.ndim > 1 or (m.m.size != c and not (m.m.size == 1 and c)):
            return "Mul constant is not one factor per channel of the last axis"
        if residual_operands(m.add) is None:
            return "the Add's operands broadcast other than over leading dimensions (or unknown)"
        return None

    def rewrite(self, graph: gs.Graph, m: _AddMulQ, ctx: PassContext) -> None:
        a, b = residual_operands(m.add)
        c = m.add.outputs[0].shape[-1]
        mult = np.broadcast_to(m.m.astype(np.float32).reshape(-1), (c,)).copy()
        name = f"{m.q.name}/AddMulQuantizeLinear"
        codes, total = m.q.outputs[0], m.add.outputs[0]
        scale, zp = m.q.inputs[1], m.q.inputs[2]
        for n in (m.q, m.mul, m.add):
            n.outputs.clear()
        make_add_mul_quantize_linear_node(graph, a, b, gs.Constant(f"{name}/M", mult), scale, zp,
                                          name=name, codes=codes, total=total)
