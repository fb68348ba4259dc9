"""Normalise the attention scale to one constant Mul on the Q·Kᵀ product.

Matches the three forms exporters emit, anchored on an attention Softmax:

    Div(MatMul(q, kᵀ), √d)                  eager attention (Hugging Face, torchvision)
    Mul(MatMul(q, kᵀ), s)                   already canonical; merged with any of the others
    MatMul(Mul(q, √s), Mul(kᵀ, √s))         scaled_dot_product_attention decompositions
                                           (the Muls may sit behind Reshape/Transpose)

Refuses: a scale that is not a constant scalar.
Emits:   Mul(MatMul(q, kᵀ), s) with s the product of every scale found, directly after the MatMul
         (any bias/mask Add stays between it and the Softmax). The quantizer then sees the scores as
         the one tensor FQ-ViT quantizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.edit import bypass, replace_uses
from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import (
    LAYOUT_OPS,
    data_inputs,
    from_activation_matmul,
    producer,
    scalar,
    single_consumer,
)

# Between the scores MatMul and the Softmax: scale, additive bias/mask, Swin's window reshapes.
_SCORE_PATH = frozenset({"Mul", "Div", "Add", "Reshape", "Cast"})


@dataclass
class _ScaleMatch:
    matmul: gs.Node
    scale: float = 1.0
    removable: list[gs.Node] = field(default_factory=list)  # scalar Mul/Div nodes to bypass


class NormalizeAttentionScale(RewritePass):
    id = "normalize-attention-scale"
    matches = "Softmax fed by MatMul(q,kᵀ) with Div/Mul scales on the scores or on q and k"
    emits = "Mul(MatMul(q,kᵀ), scale)"
    anchor_ops = ("Softmax",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _ScaleMatch | None:
        m = None
        t = node.inputs[0]
        scales: list[tuple[gs.Node, float]] = []
        for _ in range(8):
            p = producer(t)
            if p is None:
                return None
            if p.op == "MatMul" and len(data_inputs(p)) == 2:
                m = _ScaleMatch(p)
                break
            if p.op not in _SCORE_PATH:
                return None
            s = _scalar_factor(p)
            if s is not None:
                scales.append((p, s))
            ins = data_inputs(p)
            if p.op == "Add":
                # follow the scores, not the bias/mask (a mask may itself be computed)
                ins = [i for i in ins if from_activation_matmul(i)] or ins[:1]
            if not ins:
                return None
            t = ins[0]
        if m is None:
            return None
        for side in m.matmul.inputs:
            scales += _operand_scales(side)
        for n, s in scales:
            m.scale *= s
            m.removable.append(n)
        return m

    def check(self, graph: gs.Graph, m: _ScaleMatch) -> str | None:
        if not m.removable:
            return "no scale found (scale 1)"
        only = m.removable[0] if len(m.removable) == 1 else None
        if only is not None and only.op == "Mul" and _follows(only, m.matmul):
            return "already canonical"
        return None

    def rewrite(self, graph: gs.Graph, m: _ScaleMatch, ctx: PassContext) -> None:
        for n in m.removable:  # unary on data: consumers take its data input
            bypass(n, data_inputs(n)[0])
        scores = m.matmul.outputs[0]
        scaled = gs.Variable(f"{scores.name}/scaled", dtype=scores.dtype, shape=scores.shape)
        replace_uses(scores, scaled)
        const = gs.Constant(f"{m.matmul.name}/scale", np.array(m.scale, dtype=np.float32))
        graph.nodes.append(gs.Node("Mul", name=f"{m.matmul.name}/Scale",
                                   inputs=[scores, const], outputs=[scaled]))


def _scalar_factor(node: gs.Node) -> float | None:
    """s if the node multiplies its data input by the constant scalar s (Div by d gives 1/d)."""
    if node.op not in ("Mul", "Div") or len(data_inputs(node)) != 1:
        return None
    if node.op == "Div":
        d = scalar(node.inputs[1])
        if d is None or d == 0 or not isinstance(node.inputs[0], gs.Variable):
            return None
        return 1.0 / d
    s = scalar(node.inputs[1])
    return s if s is not None else scalar(node.inputs[0])


def _operand_scales(t: gs.Tensor) -> list[tuple[gs.Node, float]]:
    """Scalar Muls on one MatMul operand, looking back through layout ops (they commute)."""
    found = []
    for _ in range(6):
        p = producer(t)
        if p is None or len(t.outputs) != 1:
            break
        s = _scalar_factor(p)
        if s is not None:
            found.append((p, s))
        elif p.op not in LAYOUT_OPS:
            break
        ins = data_inputs(p)
        if len(ins) != 1:
            break
        t = ins[0]
    return found


def _follows(node: gs.Node, matmul: gs.Node) -> bool:
    return single_consumer(matmul.outputs[0]) is node

