"""Give a QuantizedLinear the quantizer that reads its output, so the float tensor is never
written: the QKV projection's hoisted QuantizeLinear (read by the fused attention) and fc1's
GeluQuantizeLinear (read by fc2) become the Linear's epilogue.

    QuantizedLinear ─QuantizeLinear(s, z)        ->  QuantizedLinearQuantize(..., s, z)
    QuantizedLinear(bias 0) ─GeluQuantizeLinear(bias, s, z)
                                                 ->  QuantizedLinearGeluQuantize(.., bias, s, z)

Matches: a QuantizeLinear or com.onnxvq GeluQuantizeLinear whose input is a com.onnxvq
         QuantizedLinear's output read by nothing else (and not a graph output), or for
         QuantizeLinear that output through one Reshape (the QKV head split's, before the
         hoisted quantizer: a per-tensor quantizer commutes with it, so the Reshape moves
         after the fused op and reshapes the codes).
Refuses: a scale that is not a positive constant, a zero point that is not a constant uint8,
         either one neither a scalar nor one per column (a per-axis quantizer behind the Reshape
         is expanded to one per column when its axis is the first of the split last dimension:
         the QKV pieces), GELU's quantizer not scalar, a GELU bias that is not a constant [N],
         a GELU after a Linear that has its own nonzero bias (two float additions cannot become
         one).
Emits:   the fused op with the Linear's seven inputs (for GELU, the GELU's bias in place of the
         Linear's zero bias: (acc·s ⊕ 0) ⊕ b = acc·s ⊕ b) and the quantizer's scale and zero
         point; the same codes bit for bit as the two kernels it replaces (plugins/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import const_value, producer
from onnxvq.plugins.functions import DOMAIN
from onnxvq.plugins.ops import make_quantized_linear_node


@dataclass
class _Pair:
    quant: gs.Node
    linear: gs.Node
    reshape: gs.Node | None = None


class FuseLinearQuantize(RewritePass):
    id = "fuse-linear-quantize"
    matches = "QuantizeLinear / GeluQuantizeLinear(QuantizedLinear)"
    emits = "com.onnxvq QuantizedLinearQuantize / QuantizedLinearGeluQuantize"
    anchor_ops = ("QuantizeLinear", "GeluQuantizeLinear")

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _Pair | None:
        if node.op == "GeluQuantizeLinear" and node.domain != DOMAIN:
            return None
        lin, reshape = producer(node.inputs[0]), None
        if lin is not None and lin.op == "Reshape" and node.op == "QuantizeLinear":
            lin, reshape = producer(lin.inputs[0]), lin
        if lin is None or lin.op != "QuantizedLinear" or lin.domain != DOMAIN:
            return None
        return _Pair(node, lin, reshape)

    def check(self, graph: gs.Graph, m: _Pair) -> str | None:
        for t in (m.linear.outputs[0], *(m.reshape.outputs if m.reshape else ())):
            if len(t.outputs) != 1 or t in graph.outputs:
                return "the Linear's float output is read elsewhere too"
        gelu = m.quant.op == "GeluQuantizeLinear"
        qp = _column_qparams(m)
        if isinstance(qp, str):
            return qp
        if gelu and qp[0].size != 1:
            return "GELU's quantizer is not per-tensor"
        if gelu:
            b, n = const_value(m.quant.inputs[1]), const_value(m.linear.inputs[1]).shape[1]
            if b is None or b.size != n:
                return "GELU bias is not a constant over the output columns"
            own = const_value(m.linear.inputs[6])
            if own is None or np.any(own != 0):
                return "the Linear has its own bias before the GELU's"
        return None

    def rewrite(self, graph: gs.Graph, m: _Pair, ctx: PassContext) -> None:
        gelu = m.quant.op == "GeluQuantizeLinear"
        ins = list(m.linear.inputs)
        q = list(m.quant.inputs)
        if gelu:
            ins[6] = gs.Constant(f"{m.linear.name}/gelu_bias",
                                 np.asarray(const_value(q[1]), np.float32).reshape(-1))
        ys, yz = _column_qparams(m)
        scale = gs.Constant(f"{m.linear.name}/y_scale", ys.astype(np.float32))
        zp = gs.Constant(f"{m.linear.name}/y_zero_point", yz.astype(np.uint8))
        out = m.quant.outputs[0]
        m.quant.outputs.clear()
        op = "QuantizedLinearGeluQuantize" if gelu else "QuantizedLinearQuantize"
        stem = m.linear.name.removesuffix("/QuantizedLinear")
        if m.reshape is not None:  # the codes are reshaped instead of the floats
            codes = gs.Variable(f"{stem}/codes", dtype=np.uint8, shape=m.linear.outputs[0].shape)
            m.reshape.inputs[0] = codes
            m.reshape.outputs = [out]
            out = codes
        m.linear.outputs.clear()
        make_quantized_linear_node(graph, [*ins, scale, zp], name=f"{stem}/{op}", output=out,
                                   op=op)


def _column_qparams(m: _Pair) -> tuple[np.ndarray, np.ndarray] | str:
    """The quantizer as (scale, zero point): scalars, or one per Linear output column."""
    gelu = m.quant.op == "GeluQuantizeLinear"
    ins = list(m.quant.inputs)
    at = 2 if gelu else 1
    s = const_value(ins[at])
    z = const_value(ins[at + 1]) if len(ins) > at + 1 else None
    if s is None or not np.isfinite(s).all() or np.any(s <= 0):
        return "quantizer scale is not a positive constant"
    if z is None or z.dtype != np.uint8 or z.size != s.size:
        return "quantizer zero point is not a constant uint8 of the scale's size"
    if s.size == 1:
        return s.reshape(()), z.reshape(())
    n = const_value(m.linear.inputs[1]).shape[1]
    x = m.quant.inputs[0]
    rank = len(x.shape) if x.shape is not None else 0
    axis = m.quant.attrs.get("axis", 1) % max(rank, 1)
    lin_rank = len(m.linear.outputs[0].shape or ())
    inner = x.shape[axis:] if x.shape is not None else []
    if (not inner or not all(isinstance(d, int) for d in inner) or axis != lin_rank - 1
            or int(np.prod(inner)) != n or inner[0] != s.size):
        return "per-axis quantizer does not split the Linear's output columns"
    piece = np.arange(n) // (n // s.size)  # column c lies in piece c // (its size)
    return s.reshape(-1)[piece], z.reshape(-1)[piece]
