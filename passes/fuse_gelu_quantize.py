"""Fuse an erf GELU and the QuantizeLinear that reads it into com.onnxvq GeluQuantizeLinear.

    MatMul ─Add(b)─[erf GELU]─QuantizeLinear(s, zp)   ->   MatMul ─GeluQuantizeLinear(b, s, zp)

Matches: a GELU unit (erf form, or the opset-20 `Gelu` op without `approximate`) on a float32
         input, optionally preceded by an Add of a 1-D constant bias over the last axis (folded
         into the op's bias input), whose output is read by a QuantizeLinear.
Refuses: an output also read by anything but that one QuantizeLinear (its float value would be
         lost), a per-axis or non-constant scale / zero point, a GELU input that is not float32,
         and (without a bias Add) an unknown last dimension (the zero bias needs its length).
Emits:   GeluQuantizeLinear(x, bias, scale, zp) writing the QuantizeLinear's output tensor: the fc1
         output is read once and written as 8-bit codes, instead of a float GELU round trip
         through memory and a separate QuantizeLinear. Same erf GELU as the unfused graph (the
         kernel's erf is within 3e-7 of the exact one, see plugins/README.md), so unlike
         ort-fast-gelu it changes a code only within ~1e-6 of a rounding midpoint. Runs before
         ort-fast-gelu, which then only sees the GELUs this pass refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import byte_quantizer_refusal, const_value, producer
from onnxvq.plugins.ops import make_gelu_quantize_linear_node
from onnxvq.recognise.activations import match_exact_gelu


@dataclass
class _GeluQ:
    nodes: list[gs.Node]
    x: gs.Tensor
    out: gs.Tensor
    bias: np.ndarray | None
    bias_add: gs.Node | None


def _bias_add(x: gs.Tensor, nodes: list[gs.Node]) -> tuple[gs.Node, gs.Tensor, np.ndarray] | None:
    """The Add(x', b) producing `x` with a 1-D constant b, read only by the GELU's nodes."""
    add = producer(x)
    if add is None or add.op != "Add" or len(add.inputs) != 2:
        return None
    if not all(any(c is n for n in nodes) for c in x.outputs):
        return None
    for i in (0, 1):
        v = const_value(add.inputs[i])
        if v is not None and v.ndim == 1 and not isinstance(add.inputs[1 - i], gs.Constant):
            return add, add.inputs[1 - i], v.astype(np.float32)
    return None


class FuseGeluQuantize(RewritePass):
    id = "fuse-gelu-quantize"
    matches = "erf GELU (bias Add before it) whose only reader is one QuantizeLinear"
    emits = "com.onnxvq GeluQuantizeLinear(x, bias, scale, zp)"
    anchor_ops = ("Erf", "Gelu")

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _GeluQ | None:
        unit = match_exact_gelu(node)
        if unit is None:
            return None
        act, x, out = unit
        if not any(c.op == "QuantizeLinear" for c in out.outputs):
            return None  # a GELU read in float only: not this pattern (ort-fast-gelu says why)
        by_name = {n.name: n for n in graph.nodes}
        nodes = [by_name[n] for n in act.nodes if n in by_name]
        found = _bias_add(x, nodes)
        if found is not None:
            add, x_in, bias = found
            return _GeluQ(nodes, x_in, out, bias, add)
        return _GeluQ(nodes, x, out, None, None)

    def check(self, graph: gs.Graph, m: _GeluQ) -> str | None:
        readers = list(m.out.outputs)
        if len(readers) != 1 or readers[0].op != "QuantizeLinear" or m.out in graph.outputs:
            return "GELU output is read in float (not only by one QuantizeLinear)"
        reason = byte_quantizer_refusal(readers[0], "GELU output")
        if reason:
            return reason
        if m.x.dtype not in (np.float32, None):
            return f"GELU input is {m.x.dtype}, not float32"
        n = m.x.shape[-1] if m.x.shape and isinstance(m.x.shape[-1], int) else None
        if n is None and (m.bias is None or m.bias.size == 1):
            return "GELU input's last dimension is unknown"
        if m.bias is not None and n is not None and m.bias.size not in (1, n):
            return f"bias of length {m.bias.size} over a last dimension of {n}"
        return None

    def rewrite(self, graph: gs.Graph, m: _GeluQ, ctx: PassContext) -> None:
        q = m.out.outputs[0]
        name = f"{m.nodes[0].name}/GeluQuantizeLinear"
        bias = m.bias if m.bias is not None else np.zeros(1, np.float32)
        if bias.size == 1:  # a scalar bias (or none) over the known last dimension
            bias = np.full(m.x.shape[-1], bias.reshape(()), np.float32)
        codes = q.outputs[0]
        scale, zp = q.inputs[1], q.inputs[2]
        q.outputs.clear()
        make_gelu_quantize_linear_node(graph, m.x, gs.Constant(f"{name}/bias", bias), scale, zp,
                                       name=name, output=codes)
        for n in m.nodes + ([m.bias_add] if m.bias_add is not None else []):
            n.outputs.clear()
