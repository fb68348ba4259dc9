"""LIS's log quantizer on the attention probabilities with standard ops only (`--lis-qdq`).

The float fallback of LogIntSoftmax/LogIntMatMul for runtimes without onnxvq's custom ops. Log
codes are not uniform, so no QuantizeLinear on the probabilities expresses them; one on their
logarithm does: the code is k = round(-s log2 p) (s = octave_steps: 1 for log2 codes, 2 for
log-sqrt(2)), a QuantizeLinear with scale 1 on t = -s log2 p, and the code's value is
2^(-k/s), zero for k > M = max_code(bits).

Matches: an attention A·V MatMul (`ctx.structure`) whose first input is DequantizeLinear(
         QuantizeLinear(p)), the uniform probs Q/DQ the W8A8 passes inserted.
Refuses: an A·V whose probabilities carry no Q/DQ (attention not quantized, --skip).
Emits:   p --Log--Mul(-s/ln2)--Min(255)--QuantizeLinear(1, 0) uint8--DequantizeLinear(1, 0)--> t̂
         --Mul(-ln2/s)--Exp--Mul(t̂ <= M)--> A·V's first input; the uniform Q/DQ is dropped.
         Float emulation, not bit-exact with LogIntSoftmax: the probabilities are the float
         Softmax's, not I-BERT's integer exp; the rounding rule (geometric midpoints) is the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.edit import dequantize_linear, qparam_constants, quantize_linear, replace_input
from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import producer
from onnxvq.plugins.reference import max_code


@dataclass
class _Site:
    context: gs.Node
    dq: gs.Node | None
    q: gs.Node | None


class LogSoftmaxQDQ(RewritePass):
    id = "log-softmax-qdq"
    matches = "attention A·V MatMul whose probabilities are DQ(Q(p))"
    emits = "Log -> Mul -> QuantizeLinear -> DequantizeLinear -> Mul -> Exp -> Mul (log codes)"
    anchor_ops = ("MatMul",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _Site | None:
        if ctx.structure is None or node.name not in {
                a.context_matmul for a in ctx.structure.attentions}:
            return None
        dq = producer(node.inputs[0])
        q = producer(dq.inputs[0]) if dq is not None and dq.op == "DequantizeLinear" else None
        return _Site(node, dq, q if q is not None and q.op == "QuantizeLinear" else None)

    def check(self, graph: gs.Graph, m: _Site) -> str | None:
        return None if m.q is not None else "attention probabilities are not quantized"

    def rewrite(self, graph: gs.Graph, m: _Site, ctx: PassContext) -> None:
        cfg = ctx.config
        steps = cfg.lis_octave_steps if cfg is not None else 1
        bits = cfg.attention_bits if cfg is not None else 4
        codes = log_codes(graph, m.q.inputs[0], steps, bits, f"{m.context.name}/log_qdq")
        replace_input(m.context, m.dq.outputs[0], codes)


def log_codes(graph: gs.Graph, p: gs.Tensor, steps: int, bits: int, name: str) -> gs.Variable:
    """The value of p's log codes, 2^(-round(-s log2 p)/s) or 0 past M, in standard ops."""
    def node(op: str, *inputs, dtype=np.float32) -> gs.Variable:
        out = gs.Variable(f"{name}/{op.lower()}{len(graph.nodes)}", dtype=dtype, shape=p.shape)
        graph.nodes.append(gs.Node(op, name=f"{name}/{op}{len(graph.nodes)}",
                                   inputs=list(inputs), outputs=[out]))
        return out

    def const(tag: str, value: float) -> gs.Constant:
        return gs.Constant(f"{name}/{tag}", np.array(value, np.float32))

    # Log(0) = -inf gives t = +inf; the Min keeps QuantizeLinear's input finite (255 saturates).
    t = node("Min", node("Mul", node("Log", p), const("to_codes", -steps / math.log(2.0))),
             const("top", 255.0))
    s, z = qparam_constants(f"{name}/code", 1.0, 0, np.uint8)
    k = dequantize_linear(graph, quantize_linear(graph, t, s, z, name=f"{name}/Q"), s, z,
                          name=f"{name}/DQ")
    value = node("Exp", node("Mul", k, const("to_log", -math.log(2.0) / steps)))
    kept = node("Cast", node("LessOrEqual", k, const("max_code", float(max_code(bits))),
                             dtype=np.bool_))
    graph.nodes[-1].attrs["to"] = 1  # FLOAT
    return node("Mul", value, kept)
