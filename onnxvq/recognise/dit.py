"""Recognise DiT's adaLN-Zero conditioning (Peebles & Xie): LayerNorms without affine modulated by
scale/shift vectors that a linear computes from the time-step + class embedding, and gates on
each branch before its residual Add.

    LayerNorm(x; γ = 1, β = 0) -> Mul(·, 1 + scale) -> Add(·, shift)      a modulated norm
    Mul(gate, branch) -> Add(residual, ·)                                 a gate

`scale`, `shift` and `gate` reach the conditioning linear (Gemm/MatMul) through layout ops only
(Split/Slice/Unsqueeze/Reshape, `+ 1`). Gating is checked on the branch outputs only, so a DiT
block counts two modulated norms and two gates; the final layer adds one modulated norm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.walk import LAYOUT_OPS, const_value, data_inputs, producer, weight_of

_PATH = LAYOUT_OPS | {"Add", "Cast"}


@dataclass
class AdaLnSummary:
    modulated_norms: list[str] = field(default_factory=list)  # LayerNorm node names
    gates: list[str] = field(default_factory=list)  # the gating Mul node names
    linears: list[str] = field(default_factory=list)  # the conditioning Gemm/MatMul nodes

    def to_dict(self) -> dict:
        return {"modulated_norms": len(self.modulated_norms), "gates": len(self.gates),
                "conditioning_linears": len(self.linears)}


def _conditioning_linear(t: gs.Tensor, limit: int = 8) -> gs.Node | None:
    """The Gemm/MatMul with a constant weight that `t` is a slice of, through layout ops."""
    for _ in range(limit):
        p = producer(t)
        if p is None:
            return None
        if p.op in ("Gemm", "MatMul") and weight_of(p) is not None:
            return p
        ins = data_inputs(p)
        if p.op not in _PATH or len(ins) != 1:
            return None
        t = ins[0]
    return None


def _without_affine(ln: gs.Node) -> bool:
    gamma = const_value(ln.inputs[1]) if len(ln.inputs) > 1 else None
    beta = const_value(ln.inputs[2]) if len(ln.inputs) > 2 else np.zeros(1)
    return gamma is not None and beta is not None and bool(np.all(gamma == 1)) and \
        bool(np.all(beta == 0))


def _modulated(ln: gs.Node) -> gs.Node | None:
    """The conditioning linear of LN -> Mul(1 + scale) -> Add(shift), or None."""
    out = ln.outputs[0].outputs
    if len(out) != 1 or out[0].op != "Mul" or not _without_affine(ln):
        return None
    mul = out[0]
    scale = next((t for t in mul.inputs if t is not ln.outputs[0]), None)
    lin = _conditioning_linear(scale) if scale is not None else None
    adds = mul.outputs[0].outputs
    if lin is None or len(adds) != 1 or adds[0].op != "Add":
        return None
    shift = next(t for t in adds[0].inputs if t is not mul.outputs[0])
    return lin if _conditioning_linear(shift) is not None else None


def summarise_adaln(graph: gs.Graph) -> AdaLnSummary | None:
    s = AdaLnSummary()
    linears: dict[str, None] = {}
    for node in graph.nodes:
        if node.op == "LayerNormalization":
            lin = _modulated(node)
            if lin is not None:
                s.modulated_norms.append(node.name)
                linears[lin.name] = None
    if not s.modulated_norms:
        return None
    for node in graph.nodes:
        if node.op != "Mul" or len(data_inputs(node)) != 2:
            continue
        lins = [_conditioning_linear(t) for t in node.inputs]
        if any(lin is not None and lin.name in linears for lin in lins) and \
                not any(producer(t) is not None and producer(t).op == "LayerNormalization"
                        for t in node.inputs) and \
                any(c.op == "Add" and len(data_inputs(c)) == 2 for c in node.outputs[0].outputs):
            s.gates.append(node.name)
    s.linears = list(linears)
    return s
