"""Store the weights of MatMul/Gemm/Conv as int8 with a per-output-channel DequantizeLinear.

Matches: the weight sites of the quantization plan (constant 2-D MatMul/Gemm weights, Conv kernels).
Emits:   MatMul(x, DQ(W_int8, s_w, axis)); Gemm/Conv also get their bias as int32 with scale s_x·s_w
         (ONNX Runtime fuses DQ→Conv/Gemm into QLinearConv/QGemm only with an int32 bias). s_w =
         max|w_c| / (2^(b-1)-1) per output channel c (not 127.5: that clips the largest weight).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import Pass, PassContext, PassResult
from onnxvq.quantizer.placement import QuantPlan

_EPS = np.float32(1e-12)


def weight_scales(w: np.ndarray, axis: int, bits: int) -> np.ndarray:
    qmax = 2 ** (bits - 1) - 1
    other = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.max(np.abs(w), axis=other).astype(np.float32)
    return np.maximum(amax / np.float32(qmax), _EPS).astype(np.float32)


def quantize_weight(w: np.ndarray, axis: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    scale = weight_scales(w, axis, bits)
    shape = [1] * w.ndim
    shape[axis] = -1
    qmax = 2 ** (bits - 1) - 1
    q = np.clip(np.rint(w / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scale


class QuantizeWeights(Pass):
    id = "quantize-weights"
    matches = "constant weights of MatMul/Gemm/Conv in the plan"
    emits = "int8 initializer + DequantizeLinear(axis=out channel); int32 bias for Gemm/Conv"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult(self.id)
        plan: QuantPlan = ctx.data["plan"]
        act_qparams = ctx.data["activation_qparams"]
        record = ctx.data.setdefault("weight_qparams", {})
        nodes = {n.name: n for n in graph.nodes}
        for site in plan.weights:
            node = nodes[site.node]
            w = np.asarray(node.inputs[1].values, dtype=np.float32)
            q, scale = quantize_weight(w, site.axis, site.bits)
            node.inputs[1] = _dequantize(graph, f"{site.node}/W", q, scale, site.axis)
            result.counts["bytes_saved"] = result.counts.get("bytes_saved", 0) + 3 * int(w.size)
            record[site.node] = {"weight": site.weight, "axis": site.axis, "bits": site.bits,
                                 "scale": scale.tolist()}
            if site.op in ("Gemm", "Conv") and len(node.inputs) > 2:
                x_scale = act_qparams[node.inputs[0].name]["scale"] if node.inputs[0].name in \
                    act_qparams else None
                if x_scale is not None and isinstance(node.inputs[2], gs.Constant):
                    node.inputs[2] = _int32_bias(graph, site.node, node.inputs[2].values,
                                                 scale * np.float32(x_scale))
                    result.counts["int32_bias"] = result.counts.get("int32_bias", 0) + 1
            result.applied += 1
        return result


def _dequantize(graph: gs.Graph, name: str, q: np.ndarray, scale: np.ndarray, axis: int,
                ) -> gs.Variable:
    zp = np.zeros(scale.shape, dtype=q.dtype)
    out = gs.Variable(f"{name}/dq", dtype=np.float32, shape=list(q.shape))
    graph.nodes.append(gs.Node(
        "DequantizeLinear", name=f"{name}/DequantizeLinear", attrs={"axis": axis},
        inputs=[gs.Constant(f"{name}/quantized", q), gs.Constant(f"{name}/scale", scale),
                gs.Constant(f"{name}/zero_point", zp)],
        outputs=[out]))
    return out


def _int32_bias(graph: gs.Graph, node: str, bias: np.ndarray, scale: np.ndarray) -> gs.Variable:
    scale = np.maximum(scale.astype(np.float32), _EPS)
    q = np.clip(np.rint(bias / scale), -(2**31) + 1, 2**31 - 1).astype(np.int32)
    return _dequantize(graph, f"{node}/B", q, scale, 0)
