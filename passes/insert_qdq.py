"""Quantize activations where the plan says: one QuantizeLinear per tensor, one DQ per consumer.

Matches: the activation sites of the quantization plan (inputs of weighted MatMul/Gemm/Conv and of
         the attention MatMuls), with their calibrated (scale, zero point).
Emits:   x -> QuantizeLinear -> DequantizeLinear -> consumer, a separate DQ for each consumer (ONNX
         Runtime's QDQ fusions want a DQ that feeds a single node). uint8 with a zero point for
         target "ort", int8 with zero point 0 for "trt".
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxvq.core.edit import dequantize_linear, qparam_constants, quantize_linear, replace_input
from onnxvq.core.pipeline import Pass, PassContext, PassResult


class InsertActivationQDQ(Pass):
    id = "insert-activation-qdq"
    matches = "activation sites of the plan"
    emits = "QuantizeLinear + one DequantizeLinear per consumer"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult(self.id)
        tensors = graph.tensors()
        nodes = {n.name: n for n in graph.nodes}
        for site in ctx.plan.activations:
            qp = ctx.activation_qparams[site.tensor]
            src = tensors[site.tensor]
            s, zp = qparam_constants(site.tensor, qp.scale, qp.zero_point, qp.dtype)
            q = quantize_linear(graph, src, s, zp, name=f"{site.tensor}/QuantizeLinear",
                                out=f"{site.tensor}/quantized")
            for i, consumer in enumerate(site.consumers):
                dq = dequantize_linear(graph, q, s, zp, name=f"{site.tensor}/DequantizeLinear{i}",
                                       out=f"{site.tensor}/dq{i}")
                replace_input(nodes[consumer], src, dq)
            result.applied += 1
            result.count("dq", len(site.consumers))
        graph.toposort()
        return result
