"""Quantize activations where the plan says: one QuantizeLinear per tensor, one DQ per consumer.

Matches: the activation sites of the quantization plan (inputs of weighted MatMul/Gemm/Conv and of
         the attention MatMuls), with their calibrated (scale, zero point).
Emits:   x -> QuantizeLinear -> DequantizeLinear -> consumer, a separate DQ for each consumer (ONNX
         Runtime's QDQ fusions want a DQ that feeds a single node). uint8 with a zero point for
         target "ort", int8 with zero point 0 for "trt".
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import Pass, PassContext, PassResult
from onnxvq.quantizer.placement import QuantPlan


class InsertActivationQDQ(Pass):
    id = "insert-activation-qdq"
    matches = "activation sites of the plan"
    emits = "QuantizeLinear + one DequantizeLinear per consumer"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult(self.id)
        plan: QuantPlan = ctx.data["plan"]
        qparams = ctx.data["activation_qparams"]
        tensors = graph.tensors()
        nodes = {n.name: n for n in graph.nodes}
        for site in plan.activations:
            qp = qparams[site.tensor]
            src = tensors[site.tensor]
            s = gs.Constant(f"{site.tensor}/scale", np.array(qp["scale"], dtype=np.float32))
            zp = gs.Constant(f"{site.tensor}/zero_point", np.array(qp["zero_point"],
                                                                    dtype=np.dtype(qp["dtype"])))
            q = gs.Variable(f"{site.tensor}/quantized", dtype=np.dtype(qp["dtype"]),
                            shape=src.shape)
            graph.nodes.append(gs.Node("QuantizeLinear", name=f"{site.tensor}/QuantizeLinear",
                                       inputs=[src, s, zp], outputs=[q]))
            for i, consumer in enumerate(site.consumers):
                dq = gs.Variable(f"{site.tensor}/dq{i}", dtype=np.float32, shape=src.shape)
                graph.nodes.append(gs.Node("DequantizeLinear",
                                           name=f"{site.tensor}/DequantizeLinear{i}",
                                           inputs=[q, s, zp], outputs=[dq]))
                node = nodes[consumer]
                for j, t in enumerate(node.inputs):
                    if t is src:
                        node.inputs[j] = dq
            result.applied += 1
            result.counts["dq"] = result.counts.get("dq", 0) + len(site.consumers)
        graph.toposort()
        return result
