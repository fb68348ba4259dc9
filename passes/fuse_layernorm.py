"""Fuse the decomposed LayerNorm of opset 13-16 exports into one LayerNormalization.

Matches (TorchScript exporter, opset < 17; ReduceMean axes an attribute, or from opset 18 an input):

    x ─ReduceMean─┐
    x ───────────Sub─┬─Pow(2)─ReduceMean─Add(eps)─Sqrt─┐
                     └──────────────────────────────Div─Mul(γ)─Add(β)

Refuses: a reduction over any axis but the last, a non-constant eps/γ/β, a Pow exponent not 2.
Emits:   LayerNormalization(x, γ, β, axis=-1, epsilon=eps). LayerNormalization needs opset 17, so
         the model's default-domain opset is raised to 17 when it is lower: no op a ViT export uses
         changed meaning between opsets 13 and 17 (the checker re-validates every node against opset
         17).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import const_value, scalar, single_consumer

LAYERNORM_OPSET = 17


@dataclass
class _LayerNormMatch:
    x: gs.Variable
    nodes: list[gs.Node]
    eps: float
    gamma: np.ndarray | None
    beta: np.ndarray | None
    out: gs.Variable


class FuseLayerNorm(RewritePass):
    id = "fuse-layernorm"
    matches = "ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div[/Mul/Add] over the last axis"
    emits = "LayerNormalization(axis=-1)"
    anchor_ops = ("ReduceMean",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext,
              ) -> _LayerNormMatch | None:
        x = node.inputs[0]
        sub = single_consumer(node.outputs[0], "Sub")
        if sub is None or sub.inputs[0] is not x or sub.inputs[1] is not node.outputs[0]:
            return None
        users = {c.op: c for c in sub.outputs[0].outputs}
        sq, div = users.get("Pow") or users.get("Mul"), users.get("Div")
        # distinct consumers: Mul(d, d) lists its node once per input slot
        if sq is None or div is None or len({id(c) for c in sub.outputs[0].outputs}) != 2:
            return None
        chain = _follow(sq.outputs[0], ("ReduceMean", "Add", "Sqrt"))
        if chain is None or single_consumer(chain[-1].outputs[0]) is not div:
            return None
        var_mean, add_eps, sqrt = chain
        nodes = [node, sub, sq, var_mean, add_eps, sqrt, div]
        out, gamma, beta = div.outputs[0], None, None
        mul = single_consumer(out, "Mul")
        if mul is not None and const_value(_other(mul, out)) is not None:
            gamma, out = const_value(_other(mul, out)), mul.outputs[0]
            nodes.append(mul)
            add = single_consumer(out, "Add")
            if add is not None and const_value(_other(add, out)) is not None:
                beta, out = const_value(_other(add, out)), add.outputs[0]
                nodes.append(add)
        eps = scalar(_other(add_eps, var_mean.outputs[0]))
        if eps is None:
            return None
        return _LayerNormMatch(x, nodes, eps, gamma, beta, out)

    def check(self, graph: gs.Graph, m: _LayerNormMatch) -> str | None:
        rank = len(m.x.shape) if m.x.shape is not None else None
        for rm in (m.nodes[0], m.nodes[3]):
            if not _last_axis(rm, rank):
                return "reduction is not over the last axis only"
        sq = m.nodes[2]
        if sq.op == "Pow" and scalar(sq.inputs[1]) != 2.0:
            return "Pow exponent is not 2"
        if sq.op == "Mul" and sq.inputs[0] is not sq.inputs[1]:
            return "squared term is not x*x"
        return None

    def rewrite(self, graph: gs.Graph, m: _LayerNormMatch, ctx: PassContext) -> None:
        channels = _channels(m)
        gamma = np.broadcast_to(m.gamma if m.gamma is not None else 1.0, (channels,))
        beta = np.broadcast_to(m.beta if m.beta is not None else 0.0, (channels,))
        name = m.nodes[0].name or "layernorm"
        g = gs.Constant(f"{name}.gamma", np.ascontiguousarray(gamma, dtype=np.float32))
        b = gs.Constant(f"{name}.beta", np.ascontiguousarray(beta, dtype=np.float32))
        out = m.out
        for n in m.nodes:
            n.outputs.clear()
        ln = gs.Node("LayerNormalization", name=f"{name}/LayerNormalization",
                     attrs={"axis": -1, "epsilon": float(m.eps)}, inputs=[m.x, g, b], outputs=[out])
        graph.nodes.append(ln)
        if graph.opset < LAYERNORM_OPSET:
            graph.opset = LAYERNORM_OPSET
            for imp in graph.import_domains or []:
                if imp.domain in ("", "ai.onnx"):
                    imp.version = LAYERNORM_OPSET


def _follow(t: gs.Tensor, ops: tuple[str, ...]) -> list[gs.Node] | None:
    chain = []
    for op in ops:
        n = single_consumer(t, op)
        if n is None:
            return None
        chain.append(n)
        t = n.outputs[0]
    return chain


def _other(node: gs.Node, t: gs.Tensor) -> gs.Tensor:
    return node.inputs[1] if node.inputs[0] is t else node.inputs[0]


def _last_axis(rm: gs.Node, rank: int | None) -> bool:
    axes = rm.attrs.get("axes")
    if axes is None and len(rm.inputs) > 1:
        v = const_value(rm.inputs[1])
        axes = None if v is None else v.reshape(-1).tolist()
    if axes is None or len(axes) != 1:
        return False
    return axes[0] == -1 or (rank is not None and axes[0] == rank - 1)


def _channels(m: _LayerNormMatch) -> int:
    for v in (m.gamma, m.beta):
        if v is not None and v.size > 1:
            return int(v.size)
    if m.x.shape is not None and isinstance(m.x.shape[-1], int):
        return int(m.x.shape[-1])
    raise ValueError("cannot tell the LayerNorm's channel count")
