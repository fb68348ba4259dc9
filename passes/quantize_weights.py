"""Store the weights of MatMul/Gemm/Conv as int8 with a per-output-channel DequantizeLinear.

Matches: the weight sites of the quantization plan (constant 2-D MatMul/Gemm weights, Conv kernels).
Refuses: Gemm with transA or alpha/beta != 1, a MatMul weight that is not 2-D
         (`refuse`; placement asks it, so such nodes keep float activations too).
Emits:   MatMul(x, DQ(W_int8, s_w, axis)); Gemm/Conv also get their bias as int32 with scale s_x·s_w
         (ONNX Runtime fuses DQ→Conv/Gemm into QLinearConv/QGemm only with an int32 bias). s_w =
         max|w_c| / (2^(b-1)-1) per output channel c (not 127.5: that clips the largest weight).
Records: one `WeightQParams` per quantized node in the result (the sidecar's "weights").
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.edit import dequantize_linear, qparam_constants
from onnxvq.core.params import WeightQParams
from onnxvq.core.pipeline import Pass, PassContext, PassResult

_EPS = np.float32(1e-12)


def weight_scales(w: np.ndarray, axis: int, bits: int) -> np.ndarray:
    qmax = 2 ** (bits - 1) - 1
    other = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.max(np.abs(w), axis=other).astype(np.float32)
    return np.maximum(amax / np.float32(qmax), _EPS).astype(np.float32)


def quantize_weight(w: np.ndarray, axis: int, bits: int,
                    scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Codes and scales; `scale` overrides max|w_c|/qmax (searched clipping: values beyond clip)."""
    scale = weight_scales(w, axis, bits) if scale is None else np.asarray(scale, np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    qmax = 2 ** (bits - 1) - 1
    q = np.clip(np.rint(w / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scale


def refuse(node: gs.Node) -> str | None:
    """Why a weighted node keeps float weights (None: it can be quantized). Placement asks this
    before it plans a site, so a refused node gets neither weight nor activation quantizers."""
    if node.op == "Gemm":
        if node.attrs.get("transA", 0):
            return "Gemm with transA"
        if node.attrs.get("alpha", 1.0) != 1.0 or node.attrs.get("beta", 1.0) != 1.0:
            return "Gemm with alpha/beta != 1"
    if node.op == "MatMul" and len(node.inputs[1].shape) != 2:
        return "MatMul weight is not 2-D"
    return None


class QuantizeWeights(Pass):
    id = "quantize-weights"
    matches = "constant weights of MatMul/Gemm/Conv in the plan"
    emits = "int8 initializer + DequantizeLinear(axis=out channel); int32 bias for Gemm/Conv"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult(self.id)
        nodes = {n.name: n for n in graph.nodes}
        for site in ctx.plan.weights:
            node = nodes[site.node]
            reason = refuse(node)
            if reason is not None:
                result.refuse(site.node, reason)
                continue
            w = np.asarray(_read(node.inputs[1]), dtype=np.float32)
            q, scale = quantize_weight(w, site.axis, site.bits,
                                       ctx.weight_scales.get(site.node))  # searched clipping
            node.inputs[1] = _dequantize(graph, f"{site.node}/W", q, scale, site.axis)
            result.count("bytes_saved", 3 * int(w.size))
            result.records.append(WeightQParams(site.node, site.weight, site.axis, site.bits,
                                                tuple(scale.tolist())))
            x = ctx.activation_qparams.get(node.inputs[0].name)
            if (site.op in ("Gemm", "Conv") and len(node.inputs) > 2 and x is not None
                    and isinstance(node.inputs[2], gs.Constant)):
                node.inputs[2] = _int32_bias(graph, site.node, node.inputs[2].values,
                                             scale * np.float32(x.scale))
                result.count("int32_bias")
            result.applied += 1
        return result


def _read(t: gs.Constant) -> np.ndarray:
    """A weight's values without keeping them loaded in the constant the rewrite drops (reading
    `values` caches them there until cleanup: every float weight of the model held twice)."""
    v = t._values
    return v.load() if isinstance(v, gs.ir.tensor.LazyValues) else v


def _dequantize(graph: gs.Graph, name: str, q: np.ndarray, scale: np.ndarray, axis: int,
                ) -> gs.Variable:
    s, zp = qparam_constants(name, scale, np.zeros(scale.shape, q.dtype), q.dtype)
    return dequantize_linear(graph, gs.Constant(f"{name}/quantized", q), s, zp,
                             name=f"{name}/DequantizeLinear", out=f"{name}/dq", axis=axis)


def _int32_bias(graph: gs.Graph, node: str, bias: np.ndarray, scale: np.ndarray) -> gs.Variable:
    scale = np.maximum(scale.astype(np.float32), _EPS)
    q = np.clip(np.rint(bias / scale), -(2**31) + 1, 2**31 - 1).astype(np.int32)
    return _dequantize(graph, f"{node}/B", q, scale, 0)
