"""Deploy PTQ4ViT twin-uniform quantizers as an exact two-branch Q/DQ decomposition.

Matches: every `TwinQParams` of the context (attention probabilities read by A·V, GELU outputs
         read by fc2), whose consumer is a MatMul.
Refuses: a consumer that is not a MatMul (a Gemm's bias would be added twice); that tensor stays
         float (reported).
Emits:   softmax: x1 = Where(x < t, x, 0), x2 = x - x1; GELU: x1 = Min(x, 0), x2 = Max(x, 0); then
         MatMul(DQ(Q(x1, d1)), B) + MatMul(DQ(Q(x2, d2)), B') -> the consumer's output, where B'
         is a second DequantizeLinear of B's codes when B is dequantized (ORT fuses a DQ that feeds
         one node). Zero maps to zero in both branches and the parts do not overlap, so the sum is
         exactly `consumer(twin(x))` (`calibrate.twin`): codes never pass 2^(b-1)-1 in the fine
         branch (x1 < (k + 1/2) d1) nor, for softmax, in the coarse one (d2 covers the maximum).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.edit import dequantize_linear, qparam_constants, quantize_linear
from onnxvq.core.pipeline import Pass, PassContext, PassResult


class TwinQDQ(Pass):
    id = "twin-qdq"
    matches = "twin-uniform sites (attention probs -> A·V, GELU -> fc2) with a MatMul consumer"
    emits = "two Q/DQ branches, two MatMuls, one Add"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult(self.id)
        tensors = graph.tensors()
        nodes = {n.name: n for n in graph.nodes}
        for t, p in ctx.twin_qparams.items():
            node = nodes.get(p.consumer)
            if node is None or node.op != "MatMul":
                result.refuse(t, f"consumer {p.consumer} is not a MatMul")
                continue
            _decompose(graph, tensors[t], node, p)
            result.applied += 1
        graph.cleanup().toposort()
        return result


def _split(graph: gs.Graph, x: gs.Tensor, p) -> tuple[gs.Variable, gs.Variable]:
    """(x1, x2) with x = x1 + x2 inside the coded range; the coarse part is clipped at its top
    code k * d2 explicitly, because an 8-bit container would otherwise keep codes above k."""
    zero = gs.Constant(f"{x.name}/twin/zero", np.array(0.0, np.float32))
    top = gs.Constant(f"{x.name}/twin/top", np.array(p.high_scale * (2 ** (p.bits - 1) - 1),
                                                     np.float32))
    x1 = gs.Variable(f"{x.name}/twin/x1", dtype=np.float32, shape=x.shape)
    x2 = gs.Variable(f"{x.name}/twin/x2", dtype=np.float32, shape=x.shape)
    if p.kind == "softmax":
        mask = gs.Variable(f"{x.name}/twin/mask", dtype=np.bool_, shape=x.shape)
        rest = gs.Variable(f"{x.name}/twin/rest", dtype=np.float32, shape=x.shape)
        split = gs.Constant(f"{x.name}/twin/split", np.array(p.threshold, np.float32))
        graph.nodes += [gs.Node("Less", f"{x.name}/twin/Less", inputs=[x, split], outputs=[mask]),
                        gs.Node("Where", f"{x.name}/twin/Where", inputs=[mask, x, zero],
                                outputs=[x1]),
                        gs.Node("Sub", f"{x.name}/twin/Sub", inputs=[x, x1], outputs=[rest]),
                        gs.Node("Min", f"{x.name}/twin/Top", inputs=[rest, top], outputs=[x2])]
    else:
        graph.nodes += [gs.Node("Min", f"{x.name}/twin/Min", inputs=[x, zero], outputs=[x1]),
                        gs.Node("Clip", f"{x.name}/twin/Clip", inputs=[x, zero, top],
                                outputs=[x2])]
    return x1, x2


def _decompose(graph: gs.Graph, x: gs.Tensor, node: gs.Node, p) -> None:
    index = next(i for i, t in enumerate(node.inputs) if t is x)
    other = node.inputs[1 - index]
    out = node.outputs[0]
    parts = []
    for branch, xi, scale, zp in zip(("low", "high"), _split(graph, x, p),
                                     (p.low_scale, p.high_scale),
                                     (p.low_zero_point, p.high_zero_point), strict=True):
        name = f"{x.name}/twin/{branch}"
        s, z = qparam_constants(name, scale, zp, p.dtype)
        dq = dequantize_linear(graph, quantize_linear(graph, xi, s, z, name=f"{name}/Q"), s, z,
                               name=f"{name}/DQ")
        b = other if branch == "low" else _second_dq(graph, other, name)
        y = gs.Variable(f"{name}/matmul", dtype=np.float32, shape=out.shape)
        inputs = [dq, b] if index == 0 else [b, dq]
        graph.nodes.append(gs.Node("MatMul", f"{node.name}/twin_{branch}", inputs=inputs,
                                   outputs=[y]))
        parts.append(y)
    node.outputs.clear()
    graph.nodes.append(gs.Node("Add", f"{node.name}/twin_sum", inputs=parts, outputs=[out]))


def _second_dq(graph: gs.Graph, t: gs.Tensor, name: str) -> gs.Tensor:
    """A copy of `t`'s DequantizeLinear (same codes and scales) so each MatMul has its own DQ."""
    prod = t.inputs[0] if t.inputs else None
    if prod is None or prod.op != "DequantizeLinear":
        return t
    return dequantize_linear(graph, prod.inputs[0], prod.inputs[1], prod.inputs[2],
                             name=f"{name}/operand_DQ", axis=prod.attrs.get("axis"))
