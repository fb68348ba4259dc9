"""Give ONNX Runtime's int8 GEMM its bias: a quantized MatMul followed by a bias Add becomes one
com.microsoft MatMulIntegerToFloat with the bias input (ORT's own QDQ fusion leaves the Add as a
separate pass over the output).

    x_q ─DQ─┐                                  x_q ─┐
            MatMul ─Add(bias)      ->                MatMulIntegerToFloat(x_q, W_q, s_x, s_w,
    W_q ─DQ─┘                                  W_q ─┘                      z_x, z_w, bias)

Matches: Add(MatMul(DQ(x_q), DQ(W_q)), b): x_q 8-bit with per-tensor scale/zero point, W_q an int8
         2-D constant with per-tensor or per-column (axis 1) scale, b a 1-D constant over the
         output columns. Each DQ read only by this MatMul, the MatMul only by the Add.
Refuses: per-axis activation scales, a weight DQ on another axis, a bias of another shape.
Emits:   MatMulIntegerToFloat: the same int32 accumulation ORT's fusion runs, scaled by s_x·s_w and
         the bias added in the GEMM's output loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import const_value, producer
from onnxvq.passes.ort_domain import MS_DOMAIN, import_ms_domain, rewire


@dataclass
class _Biased:
    add: gs.Node
    matmul: gs.Node
    dq_x: gs.Node
    dq_w: gs.Node
    bias: np.ndarray


class OrtMatMulBias(RewritePass):
    id = "ort-matmul-bias"
    matches = "Add(MatMul(DQ(x_q), DQ(W_q)), bias)"
    emits = "com.microsoft MatMulIntegerToFloat with bias"
    anchor_ops = ("Add",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _Biased | None:
        for i in (0, 1):
            b, mm = const_value(node.inputs[1 - i]), producer(node.inputs[i])
            if b is None or mm is None or mm.op != "MatMul":
                continue
            dx, dw = producer(mm.inputs[0]), producer(mm.inputs[1])
            if all(d is not None and d.op == "DequantizeLinear" for d in (dx, dw)):
                return _Biased(node, mm, dx, dw, b)
        return None

    def check(self, graph: gs.Graph, m: _Biased) -> str | None:
        w = const_value(m.dq_w.inputs[0])
        if w is None or w.dtype != np.int8 or w.ndim != 2:
            return "weight is not a constant 2-D int8 tensor"
        if m.dq_w.attrs.get("axis", 1) not in (1, -1) and const_value(m.dq_w.inputs[1]).size > 1:
            return "weight scale is not per column"
        sx = const_value(m.dq_x.inputs[1])
        if sx is None or sx.size != 1 or len(m.dq_x.inputs) < 3:
            return "activation DQ is not per-tensor with a zero point"
        if const_value(m.dq_x.inputs[2]) is None or \
                const_value(m.dq_x.inputs[2]).dtype not in (np.uint8, np.int8):
            return "activation is not 8-bit"
        if m.bias.ndim != 1 or m.bias.shape[0] != w.shape[1]:
            return "bias is not 1-D over the output columns"
        for t, reader in ((m.dq_x.outputs[0], m.matmul), (m.dq_w.outputs[0], m.matmul),
                          (m.matmul.outputs[0], m.add)):
            if len(t.outputs) != 1 or t.outputs[0] is not reader or t in graph.outputs:
                return "an intermediate is read elsewhere too"
        return None

    def rewrite(self, graph: gs.Graph, m: _Biased, ctx: PassContext) -> None:
        import_ms_domain(graph)
        out = m.add.outputs[0]
        y = gs.Variable(f"{m.matmul.name}/with_bias", dtype=np.float32, shape=out.shape)
        bias = gs.Constant(f"{m.matmul.name}/bias", m.bias.astype(np.float32))
        wz = m.dq_w.inputs[2] if len(m.dq_w.inputs) > 2 else gs.Constant(
            f"{m.matmul.name}/w_zero_point", np.zeros((), np.int8))
        graph.nodes.append(gs.Node(
            "MatMulIntegerToFloat", name=f"{m.matmul.name}/MatMulIntegerToFloat",
            domain=MS_DOMAIN, outputs=[y],
            inputs=[m.dq_x.inputs[0], m.dq_w.inputs[0], m.dq_x.inputs[1], m.dq_w.inputs[1],
                    m.dq_x.inputs[2], wz, bias]))
        rewire(out, y, graph)
        m.add.outputs.clear()
