"""Fold the 3-D spelling of a last-two-axes transpose back into one Transpose (dynamo's kᵀ).

    k [B, H, N, D] ─Reshape [-1, N, D]─Transpose [0,2,1]─Reshape [B, H, D, N]     k ─Transpose
                 └─Shape─Slice [:-2]─────────────Concat(·, [D], [N])─┘     ->      [0,1,3,2]

torch's dynamo exporter decomposes scaled_dot_product_attention's k.transpose(-2, -1) so (the
second Reshape's shape computed from k's own Shape when the batch is symbolic, a constant when
fold-static-shapes could fold it); the TorchScript export and the fused attentions have one 4-D
Transpose.

Matches: Reshape(Transpose(Reshape(x, [-1 | P, N, D]), perm [0,2,1]), t) with x of rank r >= 3
         whose last two dims are the static N, D (the graph's own shape information), P the
         product of x's other dims, and t proven to be x.shape[:-2] ++ [D, N]: a constant whose
         leading entries are x's static dims (at most one -1), or a Concat of constants and
         slices of Shape(x) (Shape with start/end, a Slice of it, Unsqueeze(Gather(Shape(x), i)))
         that name x's dims in order.
Refuses: x's last two dims not static, the first target not [-1 | P, N, D], the second target
         not provable as x's leading dims then D, N (the reason names which), an intermediate
         read elsewhere or a graph output.
Emits:   Transpose(x, perm [0, .., r-3, r-1, r-2]) writing the second Reshape's output. A pure
         data movement: bit-exact; the Shape/Concat nodes left unread are cleaned up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import const_value, producer


@dataclass
class _Chain:
    x: gs.Tensor
    first: gs.Node
    transpose: gs.Node
    last: gs.Node


class FoldReshapedTranspose(RewritePass):
    id = "fold-reshaped-transpose"
    matches = "Reshape(Transpose(Reshape(x, [-1, N, D]), [0,2,1]), x.shape[:-2] ++ [D, N])"
    emits = "Transpose(x) over its last two axes"
    anchor_ops = ("Transpose",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _Chain | None:
        if list(node.attrs.get("perm", [])) != [0, 2, 1] or len(node.outputs[0].outputs) != 1:
            return None
        first, last = producer(node.inputs[0]), node.outputs[0].outputs[0]
        if first is None or first.op != "Reshape" or last.op != "Reshape" or \
                last.inputs[0] is not node.outputs[0]:
            return None
        return _Chain(first.inputs[0], first, node, last)

    def check(self, graph: gs.Graph, m: _Chain) -> str | None:
        shape = m.x.shape
        if shape is None or len(shape) < 3 or not all(isinstance(d, int) for d in shape[-2:]):
            return "input's last two dims are not static"
        n, d = shape[-2:]
        inner = [m.first.outputs[0], m.transpose.outputs[0]]
        if any(len(t.outputs) != 1 or t in graph.outputs for t in inner):
            return "an intermediate of the chain is read elsewhere or is a graph output"
        target = const_value(m.first.inputs[1])
        lead = shape[:-2]
        whole = int(np.prod(lead)) if all(isinstance(v, int) for v in lead) else None
        if target is None or target.shape != (3,) or list(target[1:]) != [n, d] or \
                int(target[0]) not in (-1, whole):
            return "first Reshape is not to [-1, N, D] of the input's last two dims"
        dims = _target_dims(m.last.inputs[1], m.x)
        if dims is None or not _names_lead_then(dims, shape, [d, n]):
            return "second Reshape's shape is not provably the input's leading dims, then D, N"
        return None

    def rewrite(self, graph: gs.Graph, m: _Chain, ctx: PassContext) -> None:
        rank = len(m.x.shape)
        perm = [*range(rank - 2), rank - 1, rank - 2]
        out = m.last.outputs[0]
        m.last.outputs.clear()
        graph.nodes.append(gs.Node("Transpose", name=f"{m.transpose.name}/folded",
                                   attrs={"perm": perm}, inputs=[m.x], outputs=[out]))
        m.transpose.outputs.clear()
        m.first.outputs.clear()


def _names_lead_then(dims: list, shape: list, tail: list[int]) -> bool:
    """Whether `dims` (ints, or ("dim", i) for x's dim i) is x's leading dims, then `tail`. One
    -1 is fine: every other entry is x's own dim, so it resolves to the one left."""
    rank = len(shape)
    if len(dims) != rank or sum(v == -1 for v in dims[:-2]) > 1:
        return False
    lead_ok = all(v in (("dim", i), -1) or (isinstance(v, int) and v > 0 and v == shape[i])
                  for i, v in enumerate(dims[:-2]))
    return lead_ok and all(v in (t, ("dim", rank - 1 - j))
                           for j, (v, t) in enumerate(zip(dims[-2:], tail, strict=True)))


def _target_dims(t: gs.Tensor, x: gs.Tensor) -> list | None:
    """The entries of a shape tensor: ints, or ("dim", i) where the entry is x's dim i read from
    Shape(x); None when an entry cannot be proven either."""
    value = const_value(t)
    if value is not None:
        return [int(v) for v in np.ravel(value)]
    node = producer(t)
    if node is None:
        return None
    if node.op == "Concat":
        parts = [_target_dims(i, x) for i in node.inputs]
        return None if any(p is None for p in parts) else [v for p in parts for v in p]
    if node.op == "Unsqueeze" and (g := producer(node.inputs[0])) is not None and \
            g.op == "Gather" and (i := const_value(g.inputs[1])) is not None and i.ndim == 0:
        dims = _shape_dims(g.inputs[0], x)
        return None if dims is None or not -len(dims) <= int(i) < len(dims) else [dims[int(i)]]
    return _shape_dims(t, x)


def _shape_dims(t: gs.Tensor, x: gs.Tensor) -> list | None:
    """("dim", i) for each entry of Shape(x)[start:end], or of a constant Slice of it."""
    node = producer(t)
    window = slice(None)
    if node is not None and node.op == "Slice":
        starts, ends = (const_value(i) for i in node.inputs[1:3])
        extra = [const_value(i) for i in node.inputs[3:5]]
        if starts is None or ends is None or starts.size != 1 or any(
                e is None or e.size != 1 or int(e.reshape(-1)[0]) not in ((0, -1), (1,))[k]
                for k, e in enumerate(extra)):
            return None  # one axis (0), step 1
        window = slice(int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0]))
        node = producer(node.inputs[0])
    if node is None or node.op != "Shape" or node.inputs[0] is not x or x.shape is None:
        return None
    rank = len(x.shape)
    names = [("dim", i) for i in range(rank)]
    names = names[node.attrs.get("start", 0):node.attrs.get("end", rank)]
    return names[window]
