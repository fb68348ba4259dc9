"""Write dynamo's unbind (one width-1 Slice + Squeeze per index) as TorchScript's Split + Squeeze.

    X ─┬─Slice [0:1] on a─Squeeze a─ q             X ─Split(a, [1,1,1])─┬─Squeeze a─ q
       ├─Slice [1:2] on a─Squeeze a─ k      ->                          ├─Squeeze a─ k
       └─Slice [2:3] on a─Squeeze a─ v                                  └─Squeeze a─ v

timm's `q, k, v = qkv.unbind(0)` exports so from torch's dynamo exporter; the head-split passes
(hoist-quantize-over-split, the fused attentions) and the recogniser know the Split (TorchScript)
and Gather (`qkv[i]`) spellings.

Matches: a tensor X read only by Slices, each with constant scalar start and end on one constant
         axis a (the same for all; step 1), each of width 1, each read only by a Squeeze of axis
         a, together covering every index of X's static dim a once.
Refuses: nothing: any other reader, width, axis or coverage is not this pattern (not matched).
Emits:   Split(X, axis a, split [1] * size) whose outputs are the Slices' outputs in index order
         (the split sizes an input from opset 13, an attribute below), the Squeezes unchanged. A
         pure data movement: bit-exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import const_value


@dataclass
class _Unbind:
    x: gs.Tensor
    axis: int
    slices: list[gs.Node]  # in index order


class UnbindSlicesToSplit(RewritePass):
    id = "unbind-slices-to-split"
    matches = "X read only by width-1 Slices + Squeezes covering one axis"
    emits = "Split(X) + the Squeezes"
    anchor_ops = ("Slice",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _Unbind | None:
        x = node.inputs[0]
        readers = list(x.outputs)
        if readers[0] is not node or x.shape is None:
            return None  # matched once, from X's first reader
        picked = [_index(r, x.shape) for r in readers]
        if any(p is None for p in picked) or len({a for a, _ in picked}) != 1:
            return None
        axis = picked[0][0]
        size = x.shape[axis]
        if not isinstance(size, int) or sorted(i for _, i in picked) != list(range(size)) or \
                size < 2:
            return None
        order = sorted(range(len(readers)), key=lambda j: picked[j][1])
        return _Unbind(x, axis, [readers[j] for j in order])

    def rewrite(self, graph: gs.Graph, m: _Unbind, ctx: PassContext) -> None:
        outs = [s.outputs[0] for s in m.slices]
        for s in m.slices:
            s.outputs.clear()
        sizes = np.ones(len(outs), dtype=np.int64)
        name = f"{m.slices[0].name}/unbind"
        if (graph.opset or 13) >= 13:
            inputs, attrs = [m.x, gs.Constant(f"{name}/split", sizes)], {"axis": m.axis}
        else:
            inputs, attrs = [m.x], {"axis": m.axis, "split": sizes.tolist()}
        graph.nodes.append(gs.Node("Split", name=name, attrs=attrs, inputs=inputs, outputs=outs))


def _index(s: gs.Node, shape: list) -> tuple[int, int] | None:
    """(axis, index) of a width-1 Slice of a static axis read only by a Squeeze of that axis."""
    if s.op != "Slice" or len(s.inputs) < 3 or len(s.outputs[0].outputs) != 1:
        return None
    starts, ends = (const_value(i) for i in s.inputs[1:3])
    axes = const_value(s.inputs[3]) if len(s.inputs) > 3 else np.zeros(1, np.int64)
    steps = const_value(s.inputs[4]) if len(s.inputs) > 4 else np.ones(1, np.int64)
    if any(v is None or v.size != 1 for v in (starts, ends, axes, steps)) or \
            int(np.ravel(steps)[0]) != 1:
        return None
    rank = len(shape)
    axis = int(np.ravel(axes)[0]) % rank
    size = shape[axis]
    if not isinstance(size, int):
        return None
    start, end = (int(np.ravel(v)[0]) for v in (starts, ends))
    start = start + size if start < 0 else start
    end = min(end + size if end < 0 else end, size)
    if not 0 <= start < size or end != start + 1:
        return None
    sq = s.outputs[0].outputs[0]
    sq_axes = const_value(sq.inputs[1]) if len(sq.inputs) > 1 else sq.attrs.get("axes")
    if sq.op != "Squeeze" or sq_axes is None or \
            [int(a) % rank for a in np.ravel(sq_axes)] != [axis]:
        return None
    return axis, start
