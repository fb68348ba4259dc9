"""Target trt: the attention probabilities centred before their symmetric int8 quantizer.

A Softmax output P lies in [lo, hi] within [0, 1]; symmetric int8 (zero point 0, as TensorRT
requires) spends half its codes on negatives P never takes, a step of hi/127 where the ORT target's
uint8 has hi/255. With c = (lo + hi) / 2 and P' = P - c, the same 255 levels cover [lo, hi], and

    P V = P' V + c 1ᵀV        (1ᵀV: the sum of V over the keys, one row broadcast to every query)

so A·V takes P' and one Add restores the product. The sum is a second MatMul, of the constant
row c 1ᵀ with the same dequantized V (TensorRT lets a DequantizeLinear feed GEMMs only), so the
identity holds for the quantized V too.

Matches: Softmax -> P -> QuantizeLinear(P, s, 0) int8 -> DequantizeLinear -> MatMul(·, V^)
         (A·V, P^ its first input) with V^ a DequantizeLinear output, after
         insert-activation-qdq; P's calibrated range in `ctx.activation_qparams`.
Refuses: P read by anything but its quantizer; a zero point that is not 0 (not a symmetric
         target); a DQ of P^ feeding something other than an A·V MatMul's first input; V^ not a
         DequantizeLinear output, or its key count T not static.
Emits:   Add(P, -c) -> Q(s' = (hi - lo) / 2 / qmax, 0) -> DQ(s') -> MatMul -> y'
         y = Add(y', MatMul(c 1ᵀ [1, T], V^)) to the old consumers.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import Pass, PassContext, PassResult


class CenterAttentionProbs(Pass):
    id = "center-attention-probs"
    matches = "Softmax -> Q(int8, zp 0) -> DQ -> A·V MatMul"
    emits = "Add(P, -c) -> Q/DQ(range/2) -> MatMul, + c ReduceSum(V) on the product"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult(self.id)
        for sm in [n for n in graph.nodes if n.op == "Softmax"]:
            p = sm.outputs[0]
            qp = ctx.activation_qparams.get(p.name)
            if qp is None or not p.outputs or p.outputs[0].op != "QuantizeLinear":
                continue  # not quantized (or an integer softmax): nothing to centre
            reason, matmuls = self.check(p)
            if reason is not None:
                result.refuse(p.name, reason)
                continue
            self.rewrite(graph, p, qp, matmuls)
            result.applied += 1
            result.count("matmuls", len(matmuls))
        graph.cleanup().toposort()
        return result

    def check(self, p: gs.Tensor) -> tuple[str | None, list[gs.Node]]:
        if len(p.outputs) != 1:
            return "the probabilities are read by more than their quantizer", []
        q = p.outputs[0]
        zp = q.inputs[2] if len(q.inputs) > 2 else None
        if not isinstance(zp, gs.Constant) or np.any(zp.values != 0):
            return "zero point not 0 (an asymmetric target needs no centring)", []
        matmuls = []
        for dq in q.outputs[0].outputs:
            mm = dq.outputs[0].outputs if dq.op == "DequantizeLinear" else []
            if dq.op != "DequantizeLinear" or len(mm) != 1 or mm[0].op != "MatMul" \
                    or mm[0].inputs[0] is not dq.outputs[0]:
                return "a DequantizeLinear of P does not feed an A·V MatMul's first input", []
            if _keys(mm[0]) is None:
                return "V of A·V is not a dequantized tensor with a static key count", []
            matmuls.append(mm[0])
        return None, matmuls

    def rewrite(self, graph: gs.Graph, p: gs.Tensor, qp, matmuls: list[gs.Node]) -> None:
        lo, hi = qp.range
        c = (lo + hi) / 2
        scale = np.float32(max((hi - lo) / 2, 1e-8) / (2 ** (qp.bits - 1) - 1))
        shifted = gs.Variable(f"{p.name}/centred", dtype=p.dtype, shape=p.shape)
        graph.nodes.append(gs.Node("Add", name=f"{p.name}/center", inputs=[
            p, gs.Constant(f"{p.name}/neg_center", np.asarray(-c, np.float32))],
            outputs=[shifted]))
        q = p.outputs[0]
        q.inputs[0] = shifted
        new_scale = gs.Constant(f"{p.name}/centred_scale", np.asarray(scale))
        q.inputs[1] = new_scale
        for dq in q.outputs[0].outputs:
            dq.inputs[1] = new_scale
        for mm in matmuls:
            _restore(graph, mm, c)


def _keys(mm: gs.Node) -> int | None:
    """The key count T of A·V (V^ [..., T, d]) when static and V^ is a dequantized tensor."""
    v_hat = mm.inputs[1]
    dq = v_hat.inputs[0] if v_hat.inputs else None
    if dq is None or dq.op != "DequantizeLinear" or not v_hat.shape or len(v_hat.shape) < 2:
        return None
    t = v_hat.shape[-2]
    return t if isinstance(t, int) and t > 0 else None


def _restore(graph: gs.Graph, mm: gs.Node, c: float) -> None:
    """y = y' + (c 1ᵀ) V^ on the MatMul's output (its consumers keep the name y)."""
    y = mm.outputs[0]
    pre = gs.Variable(f"{y.name}/centred", dtype=y.dtype, shape=y.shape)
    mm.outputs[0] = pre
    term = gs.Variable(f"{mm.name}/v_sum_c", dtype=y.dtype)
    ones = np.full((1, _keys(mm)), c, dtype=np.float32)
    graph.nodes += [
        gs.Node("MatMul", name=f"{mm.name}/v_sum_c", outputs=[term], inputs=[
            gs.Constant(f"{mm.name}/center_row", ones), mm.inputs[1]]),
        gs.Node("Add", name=f"{mm.name}/uncenter", inputs=[pre, term], outputs=[y]),
    ]
