"""Store the weights of MatMul/Gemm/Conv as int8 with a per-output-channel DequantizeLinear.

Matches: the weight sites of the quantization plan (constant 2-D MatMul/Gemm weights, Conv kernels).
Refuses: Gemm with transA or alpha/beta != 1, a MatMul weight that is not 2-D, a weight or bias
         with NaN/Inf values (`refuse`; placement asks it, so such nodes keep float activations
         too: a NaN cast to int8/int32 is an arbitrary code, not an error).
Emits:   MatMul(x, DQ(W_int8, s_w, axis)); Gemm/Conv also get their bias as int32 with scale s_x·s_w
         (ONNX Runtime fuses DQ→Conv/Gemm into QLinearConv/QGemm only with an int32 bias). s_w =
         max|w_c| / (2^(b-1)-1) per output channel c (not 127.5: that clips the largest weight),
         raised where the bias would not fit: a channel whose weights are tiny next to its bias
         (timm LeViT's conv mode, BatchNorm folded with a near-zero gain: |b|/(s_x·s_w) = 3e10)
         gets s_w = |b| / (s_x·BIAS_LIMIT), so its bias stays exact and its weight codes shrink
         (they carry next to nothing of the output there). Without that the int32 cast of the
         saturated bias wrapped to -2^31: the channel's bias flipped sign, silently.
Records: one `WeightQParams` per quantized node in the result (the sidecar's "weights").
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.edit import dequantize_linear, qparam_constants
from onnxvq.core.params import WeightQParams
from onnxvq.core.pipeline import Pass, PassContext, PassResult

_EPS = np.float32(1e-12)
# The largest |int32 bias code|: 2^30 leaves the other half of the int32 accumulator to the
# products (K·255·127 < 2^30 up to K = 33,000 input channels), so bias + products cannot wrap.
BIAS_LIMIT = 2 ** 30


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
    for role, t in zip(("weight", "bias"), node.inputs[1:3], strict=False):
        if isinstance(t, gs.Constant) and not np.isfinite(_read(t)).all():
            return f"{role} {t.name!r} has NaN/Inf values"
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
            x = ctx.activation_qparams.get(node.inputs[0].name)
            bias = (node.inputs[2].values if site.op in ("Gemm", "Conv") and len(node.inputs) > 2
                    and x is not None and isinstance(node.inputs[2], gs.Constant) else None)
            scale = ctx.weight_scales.get(site.node)  # searched clipping
            scale = weight_scales(w, site.axis, site.bits) if scale is None else scale
            if bias is not None:
                scale = _fit_bias(scale, bias, np.float32(x.scale))
            q, scale = quantize_weight(w, site.axis, site.bits, scale)
            node.inputs[1] = _dequantize(graph, f"{site.node}/W", q, scale, site.axis)
            result.count("bytes_saved", 3 * int(w.size))
            result.records.append(WeightQParams(site.node, site.weight, site.axis, site.bits,
                                                tuple(scale.tolist())))
            if bias is not None:
                node.inputs[2] = _int32_bias(graph, site.node, bias, scale * np.float32(x.scale))
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


def _fit_bias(scale: np.ndarray, bias: np.ndarray, x_scale: np.float32) -> np.ndarray:
    """Weight scales raised where the bias at scale s_x·s_w would need more than BIAS_LIMIT."""
    need = np.abs(bias.astype(np.float64)) / (float(x_scale) * BIAS_LIMIT)
    return np.maximum(np.asarray(scale, np.float64), need).astype(np.float32)


def _int32_bias(graph: gs.Graph, node: str, bias: np.ndarray, scale: np.ndarray) -> gs.Variable:
    scale = np.maximum(scale.astype(np.float32), _EPS)
    # float64: float32 rounds 2^31 - 1 up to 2^31, which the int32 cast wraps to -2^31
    q = np.rint(bias.astype(np.float64) / scale.astype(np.float64))
    q = np.clip(q, -BIAS_LIMIT, BIAS_LIMIT).astype(np.int32)
    return _dequantize(graph, f"{node}/B", q, scale, 0)
