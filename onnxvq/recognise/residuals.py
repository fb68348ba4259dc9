"""Residuals: every Add of two activations whose one side leads back, through layout ops,
constant bias/scale ops and a branch LayerNorm only, to an attention's output projection or an
MLP's second linear."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxvq.core.walk import LAYOUT_OPS, data_inputs, producer
from onnxvq.recognise.norms import norm_input
from onnxvq.recognise.structure import Attention, Mlp, Residual


def find_residuals(graph: gs.Graph, attentions: list[Attention], mlps: list[Mlp]) -> list[Residual]:
    ends: dict[str, str] = {}
    for a in attentions:
        if a.out_proj is not None:
            ends[a.out_proj.bias_add or a.out_proj.node] = "attention"
    for m in mlps:
        ends[m.fc2.bias_add or m.fc2.node] = "mlp"
    found = []
    for node in graph.nodes:
        if node.op != "Add" or len(data_inputs(node)) != 2:
            continue
        kinds = [_branch_kind(t, ends) for t in node.inputs[:2]]
        if None not in kinds:  # both sides end a branch (LeViT's downsample: x + mlp(x) with x
            # the attention's output): the branch is the side computed from the other
            kinds[0 if _depends_on(node.inputs[1], node.inputs[0]) else 1] = None
        for i, (t, kind) in enumerate(zip(node.inputs[:2], kinds, strict=True)):
            if kind is not None:
                found.append(Residual(node.name, node.inputs[1 - i].name, t.name, kind))
                break
    return found


def _depends_on(t: gs.Tensor, other: gs.Tensor, limit: int = 256) -> bool:
    """Whether `other` is among the tensors `t` is computed from (within `limit` tensors)."""
    frontier, seen = [t], set()
    while frontier and len(seen) < limit:
        cur = frontier.pop()
        if cur is other:
            return True
        if cur.name in seen:
            continue
        seen.add(cur.name)
        p = producer(cur)
        if p is not None:
            frontier.extend(data_inputs(p))
    return False


def _branch_kind(t: gs.Tensor, ends: dict[str, str]) -> str | None:
    """Breadth-first back through layout/constant ops until a branch end or anything else."""
    frontier, seen = [t], set()
    while frontier and len(seen) < 48:
        cur = frontier.pop(0)
        if cur.name in seen:  # Swin's roll (Slice/Slice/Concat) reaches a tensor twice
            continue
        seen.add(cur.name)
        p = producer(cur)
        if p is None:
            continue
        if p.name in ends:
            return ends[p.name]
        constant_op = p.op in ("Add", "Mul") and len(data_inputs(p)) == 1
        # a LayerNorm (or RMSNorm) on the branch: SwinV2's res-post-norm x + norm(attn(x))
        normed = norm_input(p) if p.op != "LayerNormalization" else None
        if normed is not None:
            frontier.append(normed)
        elif p.op in LAYOUT_OPS or constant_op or p.op in ("Cast", "LayerNormalization"):
            frontier.extend(data_inputs(p))
    return None
