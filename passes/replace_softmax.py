"""Replace an attention's Softmax and A·V product by LogIntSoftmax and LogIntMatMul (FQ-ViT LIS).

Matches: an attention Softmax listed in the plan (`plan.softmaxes`, `--lis`), calibrated
         (`ctx.data["fq_params"]`), whose output reaches the A·V MatMul's first input through
         single-consumer Identity/Dropout/Cast/Reshape nodes only.
Refuses: no calibrated parameters (e.g. a score scale >= ln 2: the calibration's reason); a
         probs path with other ops or other consumers; A·V not found.
Emits:
         scores --QuantizeLinear(S, 0) int8--> LogIntSoftmax(x0, b, c, n, bits) --> uint8 log2
           codes [--Reshape as on the probs path] --+
         V --QuantizeLinear(s_v, zp_v)-------------+--> LogIntMatMul(bits, zp_v) int64
           --Cast(FLOAT)--Mul(s_v * 2^-M)--> the A·V MatMul's own output tensor (consumers kept)
         Scores too wide for an int8 step below ln 2 (see fq_calib) are coded as int32 by
         Div(S)-Round-Clip-Cast: QuantizeLinear has no int32 output before opset 21, and Round
         rounds half to even as QuantizeLinear does.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

from onnxvq.calibrate.fq import WIDE_SCORE_LEVELS, FqParams, SoftmaxQuant
from onnxvq.core.pipeline import Pass, PassContext, PassResult
from onnxvq.plugins.ops import make_log_int_matmul_node, make_log_int_softmax_node
from onnxvq.plugins.reference import max_code
from onnxvq.quantizer.placement import QuantPlan
from onnxvq.recognise.structure import ViTStructure

_PASS_THROUGH = frozenset({"Identity", "Dropout", "Cast"})  # value-preserving on probabilities


class ReplaceSoftmax(Pass):
    id = "replace-softmax"
    matches = "attention Softmax feeding A·V, LIS-calibrated"
    emits = "QuantizeLinear -> LogIntSoftmax -> LogIntMatMul(V codes) -> Cast -> Mul"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult(self.id)
        plan: QuantPlan = ctx.data["plan"]
        structure: ViTStructure = ctx.data["structure"]
        fq: FqParams = ctx.data.get("fq_params") or FqParams()
        contexts = {a.softmax: a.context_matmul for a in structure.attentions}
        nodes = {n.name: n for n in graph.nodes}
        for name in plan.softmaxes:
            softmax, context = nodes.get(name), nodes.get(contexts.get(name, ""))
            q = fq.softmaxes.get(name)
            path = probs_path(softmax, context)
            reason = fq.refused.get(name) or check(softmax, context, q, path)
            if reason is not None:
                result.refuse(name, reason)
                continue
            rewrite(graph, softmax, context, q, path)
            result.applied += 1
        graph.cleanup().toposort()
        return result


def probs_path(softmax: gs.Node | None, context: gs.Node | None) -> list[gs.Node] | None:
    """The nodes from the Softmax output to A·V's first input, or None if not a clean chain."""
    if softmax is None or context is None:
        return None
    path, t = [], softmax.outputs[0]
    for _ in range(8):
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


def check(softmax, context, q: SoftmaxQuant | None, path) -> str | None:
    """None when the attention can take LIS, else why not."""
    if softmax is None or softmax.op != "Softmax":
        return "Softmax node not found"
    if context is None or context.op != "MatMul":
        return "A·V MatMul not found"
    if q is None:
        return "attention not calibrated"
    if path is None:
        return "Softmax output reaches A·V through other ops or has other consumers"
    return None


def rewrite(graph: gs.Graph, softmax: gs.Node, context: gs.Node, q: SoftmaxQuant,
            path: list[gs.Node]) -> None:
    scores, v, out = softmax.inputs[0], context.inputs[1], context.outputs[0]
    bits = q.constants.bits
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
                                   name=f"{context.name}/LogIntMatMul")
    as_float = gs.Variable(f"{context.name}/acc_float", dtype=np.float32, shape=acc.shape)
    graph.nodes.append(gs.Node("Cast", name=f"{context.name}/cast", attrs={"to": TensorProto.FLOAT},
                               inputs=[acc], outputs=[as_float]))
    # acc * s_v * 2^-M is exact in float32 for bits <= 4 (|acc| < 2^24, README LogIntMatMul).
    step = np.array(q.values_scale * 2.0 ** -max_code(bits), np.float32)
    context.outputs.clear()  # the Mul now produces A·V's output tensor; cleanup drops the rest
    graph.nodes.append(gs.Node("Mul", name=f"{context.name}/rescale",
                               inputs=[as_float, gs.Constant(f"{context.name}/step", step)],
                               outputs=[out]))


def _quantize(graph: gs.Graph, x: gs.Tensor, scale: float, zp: int, dtype, name: str,
              ) -> gs.Variable:
    out = gs.Variable(f"{name}/quantized", dtype=dtype, shape=x.shape)
    graph.nodes.append(gs.Node(
        "QuantizeLinear", name=f"{name}/QuantizeLinear",
        inputs=[x, gs.Constant(f"{name}/scale", np.array(scale, np.float32)),
                gs.Constant(f"{name}/zero_point", np.array(zp, dtype))],
        outputs=[out]))
    return out


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
