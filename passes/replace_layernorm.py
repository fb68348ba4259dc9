"""Replace LayerNormalization by FQ-ViT's integer LayerNorm on a PTS-quantized input.

Matches: LayerNormalization(x, gamma, beta) over the last axis, with constant gamma (and beta),
         listed in the plan (`ctx.plan.layernorms`, `--pts`) and calibrated (`ctx.fq_params`).
Refuses: not over the last axis, gamma/beta not constant (`refuse`: placement asks it before
         planning); the calibration's own refusal; no calibrated parameters; gamma/beta of the
         wrong length; more channels than IntLayerNorm takes; an output scale so small that
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

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

from onnxvq.core.edit import dequantize_linear, qparam_constants, quantize_linear
from onnxvq.core.errors import OnnxvqError
from onnxvq.core.params import LayerNormQuant
from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.plugins.ops import make_int_layer_norm_node
from onnxvq.plugins.reference import MAX_CHANNELS, LayerNormParams, layernorm_params

_OUT_TYPES = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8}
_DEFAULT_EPS = 1e-5  # the ONNX LayerNormalization default


@dataclass
class _Norm:
    node: gs.Node
    q: LayerNormQuant | None
    calibration_refusal: str | None
    params: LayerNormParams | None = None  # filled by check (it refuses when they overflow)


class ReplaceLayerNorm(RewritePass):
    id = "replace-layernorm"
    matches = "LayerNormalization with constant gamma/beta, PTS-calibrated"
    emits = "QuantizeLinear(per-channel 2^alpha*s1) -> IntLayerNorm -> DequantizeLinear"
    anchor_ops = ("LayerNormalization",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _Norm | None:
        if node.name not in ctx.plan.layernorms:
            return None
        fq = ctx.fq_params
        return _Norm(node, fq.layernorms.get(node.name), fq.refused.get(node.name))

    def check(self, graph: gs.Graph, m: _Norm) -> str | None:
        reason = m.calibration_refusal or refuse(m.node)
        if reason is None and m.q is None:
            reason = "LayerNorm not calibrated"
        reason = reason or _refuse_calibrated(m.node, m.q)
        if reason is None:
            try:
                m.params = integer_params(m.node, m.q)
            except OnnxvqError as exc:  # gamma / s_out overflows int32
                reason = str(exc)
        return reason

    def rewrite(self, graph: gs.Graph, m: _Norm, ctx: PassContext) -> None:
        rewrite(graph, m.node, m.q, m.params)


def refuse(node: gs.Node) -> str | None:
    """Why a LayerNormalization cannot become IntLayerNorm whatever the calibration (None: it
    can). Placement asks this before it plans the node for PTS."""
    rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
    axis = node.attrs.get("axis", -1)
    if axis != -1 and (rank is None or axis != rank - 1):
        return "LayerNorm not over the last axis"
    for i, what in ((1, "gamma"), (2, "beta")):
        if i < len(node.inputs) and not isinstance(node.inputs[i], gs.Constant):
            return f"LayerNorm {what} is not constant"
    if len(node.inputs) < 2:
        return "LayerNorm gamma is not constant"
    return None


def _refuse_calibrated(node: gs.Node, q: LayerNormQuant) -> str | None:
    c = len(q.alpha)
    if not 1 <= c <= MAX_CHANNELS:
        return f"IntLayerNorm takes 1..{MAX_CHANNELS} channels, not {c}"
    for i, what in ((1, "gamma"), (2, "beta")):
        size = np.asarray(node.inputs[i].values).size if i < len(node.inputs) else c
        if size != c:
            return f"LayerNorm {what} has {size} values for {c} channels"
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
    s1, zp = qparam_constants(f"{node.name}/pts", q.s1, q.zero_point, q.in_dtype)
    codes = quantize_linear(graph, shifted, s1, zp, name=f"{node.name}/pts_quantize",
                            out=f"{node.name}/pts_codes")
    yq = make_int_layer_norm_node(graph, codes, params, name=f"{node.name}/IntLayerNorm")
    node.outputs.clear()  # y is now produced by the DequantizeLinear; cleanup drops the node
    s_out, zp_out = qparam_constants(f"{node.name}/out", q.out_scale, q.out_zero_point,
                                     q.out_dtype)
    dequantize_linear(graph, yq, s_out, zp_out, name=f"{node.name}/dequantize", out=y)
