"""Fuse a residual Add, the LayerNorm over its sum and the LayerNorm's QuantizeLinear into one
com.onnxvq AddLayerNormQuantize.

    Add(a, b) ─┬─ LayerNormalization(γ, β) ── QuantizeLinear(s, zp) ── codes
               └─ (the sum, for the next residual)
        ->   AddLayerNormQuantize(a, b, γ, β, s, zp) -> (codes, sum)

Matches: a LayerNormalization over the last axis with constant γ (and β, or none) whose input is
         a two-input Add and whose output is read by a QuantizeLinear (and Shape nodes, which
         read the codes instead: same shape).
Refuses: a LayerNorm output also read in float by anything else (or a graph output), a per-axis or
         non-constant scale / zero point (or not uint8/int8), an Add whose operands broadcast
         other than one of them repeating over the other's leading dimensions (or whose shapes
         are unknown), a non-constant γ/β, and a LayerNorm with Mean/InvStdDev outputs in use.
Emits:   AddLayerNormQuantize writing the Add's output tensor (the sum) and the QuantizeLinear's
         output tensor (the codes): one pass over memory instead of three kernels. The sum is
         bit-exact; the codes are those of the float64 LayerNorm within one code at rounding
         midpoints (plugins/README.md), as ORT's float LayerNormalization is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import byte_quantizer_refusal, const_value, producer
from onnxvq.plugins.ops import make_add_layer_norm_quantize_node


@dataclass
class _AddLnQ:
    add: gs.Node
    ln: gs.Node
    q: gs.Node | None
    operands: tuple[gs.Tensor, gs.Tensor] | None


def _dims(t: gs.Tensor) -> list | None:
    if isinstance(t, gs.Constant):
        return list(t.values.shape)
    return list(t.shape) if t.shape is not None else None


def residual_operands(add: gs.Node) -> tuple[gs.Tensor, gs.Tensor] | None:
    """(A, B) with A of the sum's full shape and B equal to it or repeating over A's leading
    dimensions (B's shape, leading 1s dropped, a static suffix of A's); None otherwise."""
    x0, x1 = add.inputs
    d0, d1 = _dims(x0), _dims(x1)
    if d0 is None or d1 is None:
        return None
    if d0 == d1 and not isinstance(x0, gs.Constant) and not isinstance(x1, gs.Constant):
        return x0, x1
    for a, b, da, db in ((x0, x1, d0, d1), (x1, x0, d1, d0)):
        if isinstance(a, gs.Constant):
            continue
        while len(db) > 1 and db[0] == 1:
            db = db[1:]
        if (len(db) <= len(da) and all(isinstance(v, int) for v in db)
                and da[len(da) - len(db):] == db):
            return a, b
    return None


class FuseAddLayerNormQuantize(RewritePass):
    id = "fuse-add-layernorm-quantize"
    matches = "Add → LayerNormalization (last axis) → one QuantizeLinear"
    emits = "com.onnxvq AddLayerNormQuantize(a, b, γ, β, s, zp) -> (codes, sum)"
    anchor_ops = ("LayerNormalization",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _AddLnQ | None:
        add = producer(node.inputs[0])
        if add is None or add.op != "Add" or len(add.inputs) != 2:
            return None
        readers = [c for c in node.outputs[0].outputs if c.op != "Shape"]
        if not any(c.op == "QuantizeLinear" for c in readers):
            return None  # a LayerNorm read in float only (a final norm): not this pattern
        q = readers[0] if len(readers) == 1 else None
        return _AddLnQ(add, node, q, residual_operands(add))

    def check(self, graph: gs.Graph, m: _AddLnQ) -> str | None:
        ln, out = m.ln, m.ln.outputs[0]
        if m.q is None or out in graph.outputs:
            return "LayerNorm output is read in float (not only by one QuantizeLinear)"
        if any(t.outputs or t in graph.outputs for t in ln.outputs[1:]):
            return "LayerNorm's Mean/InvStdDev outputs are used"
        rank = len(out.shape) if out.shape is not None else None
        if ln.attrs.get("axis", -1) not in (-1, rank - 1 if rank else -1):
            return "LayerNorm over an axis other than the last"
        params = [const_value(t) for t in ln.inputs[1:3]]
        if any(v is None or v.ndim != 1 for v in params):
            return "non-constant or not 1-D LayerNorm scale/bias"
        reason = byte_quantizer_refusal(m.q, "LayerNorm output")
        if reason:
            return reason
        if m.operands is None:
            return "the Add's operands broadcast other than over leading dimensions (or unknown)"
        return None

    def rewrite(self, graph: gs.Graph, m: _AddLnQ, ctx: PassContext) -> None:
        ln, q = m.ln, m.q
        gamma = const_value(ln.inputs[1]).astype(np.float32)
        beta = (const_value(ln.inputs[2]) if len(ln.inputs) > 2 else None)
        beta = np.zeros_like(gamma) if beta is None else beta.astype(np.float32)
        name = f"{ln.name}/AddLayerNormQuantize"
        codes, total = q.outputs[0], m.add.outputs[0]
        for shape_reader in [c for c in ln.outputs[0].outputs if c.op == "Shape"]:
            shape_reader.inputs[0] = codes
        scale, zp = q.inputs[1], q.inputs[2]
        for n in (q, ln, m.add):
            n.outputs.clear()
        a, b = m.operands
        make_add_layer_norm_quantize_node(
            graph, a, b, gs.Constant(f"{name}/gamma", gamma), gs.Constant(f"{name}/beta", beta),
            scale, zp, epsilon=float(ln.attrs.get("epsilon", 1e-5)), name=name, codes=codes,
            total=total)
