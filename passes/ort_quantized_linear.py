"""Run ONNX Runtime's int8 Linears as onnxvq's QuantizedLinear, whose native kernel multiplies on
AMX tiles where the CPU has AMX-INT8 (B packed once). MLAS (ORT 1.32) uses AMX on such a CPU
too (measured, README "Int8 Linears on AMX"), so the gain is less the GEMM than what follows it:
fuse-linear-quantize moves the reader's quantizer or GELU codes into this op's epilogue.

    x_q ─┐                                           x_q ─┐
         MatMulIntegerToFloat(x_q, W_q, s_x, s_w,  ->      QuantizedLinear(the same inputs)
    W_q ─┘          z_x, z_w, bias)                  W_q ─┘

Matches: com.microsoft MatMulIntegerToFloat nodes (ort-matmul-bias and patch-conv-to-matmul write
         them), and MatMul(DQ(x_q), DQ(W_q)) without a bias Add (fc1 before GeluQuantizeLinear,
         which ORT itself would fuse into a MatMulIntegerToFloat), each DQ read by the MatMul
         only; when QuantConfig.quantized_linear is "on", or "auto" (the default) and this
         machine has AMX-INT8 or AVX-512 VNNI (the kernel's two packed-B paths; measured on
         DeiT-S without AMX: as fast at batch 1, ~10 % faster at batch 8, README); "off", or
         "auto" with neither, leaves every node as it is.
Refuses: activations that are not uint8 with a constant scalar scale and zero point, a weight
         that is not a constant 2-D int8 tensor with K <= 65536, a weight zero point that is not
         0, a weight scale that is neither a scalar nor one per column (a DQ on axis 0), a bias
         not over the output columns, a DQ read elsewhere too.
Emits:   QuantizedLinear with the same seven inputs (a zero bias where there was none): the same
         exact int32 sums and the same float32 multiply, then add, so the outputs are bit for
         bit those of MatMulIntegerToFloat (plugins/README.md), on every backend.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import const_value, producer
from onnxvq.passes.ort_domain import MS_DOMAIN
from onnxvq.plugins.native import cpu_has_amx, cpu_has_avx512_vnni
from onnxvq.plugins.ops import make_quantized_linear_node
from onnxvq.plugins.reference.linear import MAX_K


def quantized_linear_enabled(ctx: PassContext) -> bool:
    mode = ctx.config.quantized_linear if ctx.config is not None else "auto"
    return mode == "on" or (mode == "auto" and (cpu_has_amx() or cpu_has_avx512_vnni()))


@dataclass
class _Linear:
    node: gs.Node
    inputs: list  # MatMulIntegerToFloat's seven (None where absent)
    dqs: tuple = ()  # the MatMul variant's two DequantizeLinears


class OrtQuantizedLinear(RewritePass):
    id = "quantized-linear"
    matches = "MatMulIntegerToFloat, or MatMul(DQ(x_q), DQ(W_q)), with a constant int8 weight"
    emits = "com.onnxvq QuantizedLinear (AMX tiles, else AVX-512 VNNI, B packed once)"
    anchor_ops = ("MatMulIntegerToFloat", "MatMul")

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _Linear | None:
        if not quantized_linear_enabled(ctx):
            return None
        if node.op == "MatMulIntegerToFloat":
            if node.domain != MS_DOMAIN:
                return None
            return _Linear(node, list(node.inputs) + [None] * (7 - len(node.inputs)))
        dx, dw = producer(node.inputs[0]), producer(node.inputs[1])
        if any(d is None or d.op != "DequantizeLinear" or len(d.inputs) < 3 for d in (dx, dw)):
            return None
        return _Linear(node, [dx.inputs[0], dw.inputs[0], dx.inputs[1], dw.inputs[1],
                              dx.inputs[2], dw.inputs[2], None], (dx, dw))

    def check(self, graph: gs.Graph, m: _Linear) -> str | None:
        ins = m.inputs
        w = const_value(ins[1])
        if w is None or w.dtype != np.int8 or w.ndim != 2:
            return "weight is not a constant 2-D int8 tensor"
        k, n = w.shape
        if k > MAX_K:
            return f"K = {k} > {MAX_K} (the int32 accumulation could overflow)"
        sa, za = (const_value(t) if t is not None else None for t in (ins[2], ins[4]))
        if sa is None or za is None or sa.size != 1 or za.size != 1 or za.dtype != np.uint8:
            return "activation is not uint8 with a constant scalar scale and zero point"
        sw = const_value(ins[3])
        if sw is None or sw.size not in (1, n) or (
                m.dqs and sw.size > 1 and m.dqs[1].attrs.get("axis", 1) not in (1, -1)):
            return "weight scale is neither a scalar nor one per column"
        zw = const_value(ins[5]) if ins[5] is not None else np.zeros((), np.int8)
        if zw is None or zw.size not in (1, n) or np.any(zw != 0):
            return "weight zero point is not 0"
        b = const_value(ins[6]) if ins[6] is not None else np.zeros(n, np.float32)
        if b is None or b.size != n:
            return "bias is not one value per output column"
        if any(len(d.outputs[0].outputs) != 1 or d.outputs[0] in graph.outputs for d in m.dqs):
            return "a DequantizeLinear output is read elsewhere too"
        return None

    def rewrite(self, graph: gs.Graph, m: _Linear, ctx: PassContext) -> None:
        ins, node = list(m.inputs), m.node
        n = const_value(ins[1]).shape[1]
        stem = node.name.removesuffix("/MatMulIntegerToFloat")
        if ins[5] is None:
            ins[5] = gs.Constant(f"{stem}/w_zero_point", np.zeros((), np.int8))
        if ins[6] is None:
            ins[6] = gs.Constant(f"{stem}/bias", np.zeros(n, np.float32))
        out = node.outputs[0]
        node.outputs.clear()
        make_quantized_linear_node(graph, ins, name=f"{stem}/QuantizedLinear", output=out)
