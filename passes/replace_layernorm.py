"""Replace LayerNormalization by FQ-ViT's integer LayerNorm on a PTS-quantized input.

Matches: LayerNormalization(x, gamma, beta) over the last axis, with constant gamma (and beta),
         listed in the plan (`plan.layernorms`, `--pts`) and calibrated (`ctx.data["fq_params"]`).
Refuses: no calibrated parameters (with the calibration's reason); gamma/beta not constant or of
         the wrong length; more channels than IntLayerNorm takes; an output scale so small that
         gamma/s_out overflows int32 (`layernorm_params` says so).
Emits:
         x --Mul(2^-alpha_c)--QuantizeLinear(s1, zp)--> uint8 PTS codes (int8, zp 0 for trt)
           --IntLayerNorm(alpha, gamma_int, beta_int)--> uint8/int8 codes of (s_out, zp_out)
           --DequantizeLinear(s_out, zp_out)-----------> y (the LayerNorm's own output tensor,
                                                           so every consumer is kept)

The PTS quantizer is the per-channel QuantizeLinear with scales 2^alpha_c * s1, written as an
exact power-of-two Mul and a per-tensor QuantizeLinear: x * 2^-a / s1 and x / (2^a * s1) are the
same float32 number, so the codes are bit-identical (checked against ORT's per-axis kernel), but
ORT's per-axis QuantizeLinear on the last axis quantizes one element per call (60x slower: it
took 133 of 170 ms of the CIFAR ViT at batch 8) and TensorRT takes only per-tensor activation Q.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

from onnxvq.calibrate.fq import FqParams, LayerNormQuant
from onnxvq.core.errors import OnnxvqError
from onnxvq.core.pipeline import Pass, PassContext, PassResult
from onnxvq.plugins.ops import make_int_layer_norm_node
from onnxvq.plugins.reference import MAX_CHANNELS, LayerNormParams, layernorm_params
from onnxvq.quantizer.placement import QuantPlan

_OUT_TYPES = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8}
_DEFAULT_EPS = 1e-5  # the ONNX LayerNormalization default


class ReplaceLayerNorm(Pass):
    id = "replace-layernorm"
    matches = "LayerNormalization with constant gamma/beta, PTS-calibrated"
    emits = "QuantizeLinear(per-channel 2^alpha*s1) -> IntLayerNorm -> DequantizeLinear"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult(self.id)
        plan: QuantPlan = ctx.data["plan"]
        fq: FqParams = ctx.data.get("fq_params") or FqParams()
        nodes = {n.name: n for n in graph.nodes}
        for name in plan.layernorms:
            node, q = nodes.get(name), fq.layernorms.get(name)
            reason = fq.refused.get(name) or check(node, q)
            params = None
            if reason is None:
                try:
                    params = integer_params(node, q)
                except OnnxvqError as exc:
                    reason = str(exc)
            if reason is not None:
                result.refuse(name, reason)
                continue
            rewrite(graph, node, q, params)
            result.applied += 1
        graph.cleanup().toposort()
        return result


def check(node: gs.Node | None, q: LayerNormQuant | None) -> str | None:
    """None when `node` can become IntLayerNorm with the calibrated `q`, else why not."""
    if node is None or node.op != "LayerNormalization":
        return "LayerNormalization node not found"
    if q is None:
        return "LayerNorm not calibrated"
    c = len(q.alpha)
    if not 1 <= c <= MAX_CHANNELS:
        return f"IntLayerNorm takes 1..{MAX_CHANNELS} channels, not {c}"
    for i, what in ((1, "gamma"), (2, "beta")):
        if i >= len(node.inputs):
            continue
        t = node.inputs[i]
        if not isinstance(t, gs.Constant):
            return f"LayerNorm {what} is not constant"
        if np.asarray(t.values).size != c:
            return f"LayerNorm {what} has {np.asarray(t.values).size} values for {c} channels"
    return None


def integer_params(node: gs.Node, q: LayerNormQuant) -> LayerNormParams:
    """IntLayerNorm's constants from the node's float gamma/beta/eps and the calibrated scales."""
    gamma = np.asarray(node.inputs[1].values, np.float64).reshape(-1)
    beta = (np.asarray(node.inputs[2].values, np.float64).reshape(-1) if len(node.inputs) > 2
            else np.zeros_like(gamma))
    eps = float(node.attrs.get("epsilon", _DEFAULT_EPS))
    return layernorm_params(gamma, beta, q.s1, np.asarray(q.alpha), q.zero_point, q.out_scale,
                            q.out_zero_point, eps=eps, output_dtype=_OUT_TYPES[q.out_dtype])


def rewrite(graph: gs.Graph, node: gs.Node, q: LayerNormQuant, params: LayerNormParams) -> None:
    x, y = node.inputs[0], node.outputs[0]
    shifts = gs.Constant(f"{node.name}/pts_shift", (2.0 ** -np.asarray(q.alpha)).astype(np.float32))
    shifted = gs.Variable(f"{node.name}/pts_shifted", dtype=np.float32, shape=x.shape)
    graph.nodes.append(gs.Node("Mul", name=f"{node.name}/pts_shift", inputs=[x, shifts],
                               outputs=[shifted]))
    codes = gs.Variable(f"{node.name}/pts_codes", dtype=np.dtype(q.in_dtype), shape=x.shape)
    graph.nodes.append(gs.Node(
        "QuantizeLinear", name=f"{node.name}/pts_quantize", outputs=[codes],
        inputs=[shifted, gs.Constant(f"{node.name}/pts_scale", np.array(q.s1, np.float32)),
                gs.Constant(f"{node.name}/pts_zero_point",
                            np.array(q.zero_point, np.dtype(q.in_dtype)))]))
    yq = make_int_layer_norm_node(graph, codes, params, name=f"{node.name}/IntLayerNorm")
    out_zp = np.array(q.out_zero_point, dtype=np.dtype(q.out_dtype))
    node.outputs.clear()  # y is now produced by the DequantizeLinear; cleanup drops the node
    graph.nodes.append(gs.Node(
        "DequantizeLinear", name=f"{node.name}/dequantize",
        inputs=[yq, gs.Constant(f"{node.name}/out_scale", np.array(q.out_scale, np.float32)),
                gs.Constant(f"{node.name}/out_zero_point", out_zp)],
        outputs=[y]))
