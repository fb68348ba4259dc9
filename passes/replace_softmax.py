"""Replace an attention's Softmax and A·V product by LogIntSoftmax and LogIntMatMul (FQ-ViT LIS).

Matches: an attention Softmax listed in the plan (`ctx.plan.softmaxes`, `--lis`), calibrated
         (`ctx.fq_params`), whose output reaches the A·V MatMul's first input through
         single-consumer Identity/Dropout/Cast/Reshape nodes only.
Refuses: A·V not found; the calibration's own refusal; a Softmax not over the last axis, A·V
         operands of unknown or different rank, a probs path with other ops or other consumers
         (talking heads' head-mixing Linear) (`refuse`: placement asks it before planning); no
         calibrated parameters.
Emits:
         scores --QuantizeLinear(S, 0) int8--> LogIntSoftmax(x0, b, c, n, bits, octave_steps)
           --> uint8 log2 / log-sqrt2 codes [--Reshape as on the probs path] --+
         V --QuantizeLinear(s_v, zp_v)---------------------------------------+--> LogIntMatMul(
           bits, zp_v, octave_steps) int64 --Cast(FLOAT)--Mul(s_v * 2^-acc_shift)--> the A·V
           MatMul's own output tensor (consumers kept)
         Scores too wide for an int8 step below ln 2 (see fq_calib) are coded as int32 by
         Div(S)-Round-Clip-Cast: QuantizeLinear has no int32 output before opset 21, and Round
         rounds half to even as QuantizeLinear does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

from onnxvq.core.edit import qparam_constants, quantize_linear
from onnxvq.core.params import WIDE_SCORE_LEVELS, SoftmaxQuant
from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.plugins.ops import make_log_int_matmul_node, make_log_int_softmax_node
from onnxvq.plugins.reference import acc_shift

_PASS_THROUGH = frozenset({"Identity", "Dropout", "Cast"})  # value-preserving on probabilities
_MAX_PATH = 8


@dataclass
class _Attention:
    softmax: gs.Node
    context: gs.Node | None
    q: SoftmaxQuant | None
    calibration_refusal: str | None
    path: list[gs.Node] | None


class ReplaceSoftmax(RewritePass):
    id = "replace-softmax"
    matches = "attention Softmax feeding A·V, LIS-calibrated"
    emits = "QuantizeLinear -> LogIntSoftmax -> LogIntMatMul(V codes) -> Cast -> Mul"
    anchor_ops = ("Softmax",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _Attention | None:
        if node.name not in ctx.plan.softmaxes or ctx.structure is None:
            return None
        av = next((a.context_matmul for a in ctx.structure.attentions if a.softmax == node.name),
                  None)
        context = next((n for n in graph.nodes if n.name == av), None)
        fq = ctx.fq_params
        return _Attention(node, context, fq.softmaxes.get(node.name), fq.refused.get(node.name),
                          probs_path(node, context))

    def check(self, graph: gs.Graph, m: _Attention) -> str | None:
        if m.context is None or m.context.op != "MatMul":
            return "A·V MatMul not found"
        return (m.calibration_refusal or refuse(m.softmax, m.context)
                or ("attention not calibrated" if m.q is None else None)
                or (None if m.path is not None else
                    "Softmax output reaches A·V through other ops or has other consumers"))

    def rewrite(self, graph: gs.Graph, m: _Attention, ctx: PassContext) -> None:
        rewrite(graph, m.softmax, m.context, m.q, m.path)


def refuse(softmax: gs.Node, context: gs.Node) -> str | None:
    """Why an attention Softmax cannot become LogIntSoftmax whatever the calibration (None: it
    can). Placement asks this before it plans the attention for LIS."""
    rank = len(softmax.inputs[0].shape) if softmax.inputs[0].shape is not None else None
    axis = softmax.attrs.get("axis", -1)
    if axis != -1 and (rank is None or axis != rank - 1):
        return "Softmax not over the last axis"
    a, v = context.inputs[0].shape, context.inputs[1].shape
    if a is None or v is None or len(a) != len(v) or len(a) < 2:
        return "A·V operands need the same known rank (LogIntMatMul does not broadcast)"
    if probs_path(softmax, context) is None:  # e.g. CaiT's talking heads: a Linear mixes the
        # probabilities over the heads first, and it needs linear values, not log2 codes
        return "Softmax output reaches A·V through other ops or has other consumers"
    return None


def probs_path(softmax: gs.Node | None, context: gs.Node | None) -> list[gs.Node] | None:
    """The nodes from the Softmax output to A·V's first input, or None if not a clean chain."""
    if softmax is None or context is None:
        return None
    path, t = [], softmax.outputs[0]
    for _ in range(_MAX_PATH):
        if len(t.outputs) != 1:
            return None
        c = t.outputs[0]
        if c is context:
            return path if context.inputs[0] is t else None
        if c.op not in _PASS_THROUGH and c.op != "Reshape":
            return None
        path.append(c)
        t = c.outputs[0]
    return None


def rewrite(graph: gs.Graph, softmax: gs.Node, context: gs.Node, q: SoftmaxQuant,
            path: list[gs.Node]) -> None:
    scores, v, out = softmax.inputs[0], context.inputs[1], context.outputs[0]
    bits, steps = q.constants.bits, q.constants.octave_steps
    if q.scores_dtype == "int32":
        sq = _quantize_wide(graph, scores, q.scores_scale, f"{softmax.name}/scores")
    else:
        sq = _quantize(graph, scores, q.scores_scale, 0, np.int8, f"{softmax.name}/scores")
    codes = make_log_int_softmax_node(graph, sq, q.constants, name=f"{softmax.name}/LogIntSoftmax")
    for node in path:  # carry the probs' reshapes over to the codes; the rest is value-preserving
        if node.op == "Reshape":
            codes = _reshape_like(graph, node, codes)
    vq = _quantize(graph, v, q.values_scale, q.values_zero_point, np.dtype(q.values_dtype),
                   f"{context.name}/values")
    acc = make_log_int_matmul_node(graph, codes, vq, bits=bits, zero_point=q.values_zero_point,
                                   octave_steps=steps, name=f"{context.name}/LogIntMatMul")
    as_float = gs.Variable(f"{context.name}/acc_float", dtype=np.float32, shape=acc.shape)
    graph.nodes.append(gs.Node("Cast", name=f"{context.name}/cast", attrs={"to": TensorProto.FLOAT},
                               inputs=[acc], outputs=[as_float]))
    # acc * s_v * 2^-F is exact in float32 for bits <= 4 (|acc| < 2^24, README LogIntMatMul).
    step = np.array(q.values_scale * 2.0 ** -acc_shift(bits, steps), np.float32)
    context.outputs.clear()  # the Mul now produces A·V's output tensor; cleanup drops the rest
    graph.nodes.append(gs.Node("Mul", name=f"{context.name}/rescale",
                               inputs=[as_float, gs.Constant(f"{context.name}/step", step)],
                               outputs=[out]))


def _quantize(graph: gs.Graph, x: gs.Tensor, scale: float, zp: int, dtype, name: str,
              ) -> gs.Variable:
    s, z = qparam_constants(name, scale, zp, dtype)
    return quantize_linear(graph, x, s, z, name=f"{name}/QuantizeLinear")


def _quantize_wide(graph: gs.Graph, x: gs.Tensor, scale: float, name: str) -> gs.Variable:
    def step(op: str, inputs: list, dtype=np.float32, **attrs) -> gs.Variable:
        out = gs.Variable(f"{name}/{op.lower()}", dtype=dtype, shape=x.shape)
        graph.nodes.append(gs.Node(op, name=f"{name}/{op}", attrs=attrs, inputs=inputs,
                                   outputs=[out]))
        return out

    bound = float(WIDE_SCORE_LEVELS)
    t = step("Div", [x, gs.Constant(f"{name}/scale", np.array(scale, np.float32))])
    t = step("Round", [t])
    t = step("Clip", [t, gs.Constant(f"{name}/lo", np.array(-bound, np.float32)),
                      gs.Constant(f"{name}/hi", np.array(bound, np.float32))])
    return step("Cast", [t], np.int32, to=TensorProto.INT32)


def _reshape_like(graph: gs.Graph, reshape: gs.Node, codes: gs.Variable) -> gs.Variable:
    out = gs.Variable(f"{reshape.name}/codes", dtype=np.uint8, shape=reshape.outputs[0].shape)
    graph.nodes.append(gs.Node("Reshape", name=f"{reshape.name}/codes", attrs=dict(reshape.attrs),
                               inputs=[codes, *reshape.inputs[1:]], outputs=[out]))
    return out
