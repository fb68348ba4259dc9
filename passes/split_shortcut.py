"""Split a Conv/MatMul over a Concat whose parts have very different ranges (Q-Diffusion's
shortcut-splitting quantization).

A UNet decoder concatenates a skip connection to the upsampled deep features; their ranges can
differ by 200×, so one scale for the concatenation wastes most of the levels on the small part.
Splitting the weight along the concatenated axis gives each part its own quantizer:
`Q(X)Q(W) = Q(X1)Q(W1) + Q(X2)Q(W2)`.

Matches: Conv(Concat(x1..xn, axis=1), W[, b])    group 1, W constant, channel counts known
         MatMul(Concat(x1..xn, axis=-1), W)       W constant 2-D
         where max|x_i| over the calibration data differs by more than `threshold` between parts
Refuses: grouped Convs, unknown part widths, parts without a calibrated range, ranges within the
         threshold (nothing to gain).
Emits:   Conv(x1, W[:, :c1], b) + Conv(x2, W[:, c1:c1+c2]) + ... (an Add chain; the bias once),
         MatMul likewise with W's rows split. Exact up to float summation order (1e-5).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import const_value, producer


@dataclass
class _Split:
    node: gs.Node
    concat: gs.Node
    widths: list[int | None]


class SplitShortcut(RewritePass):
    id = "split-shortcut"
    matches = "Conv/MatMul(Concat(x1..xn), W) with part ranges differing > threshold"
    emits = "sum of Conv/MatMul(x_i, W_i) over the parts"
    anchor_ops = ("Conv", "MatMul")

    def __init__(self, amax: Mapping[str, float], threshold: float = 4.0):
        self.amax, self.threshold = dict(amax), threshold

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _Split | None:
        concat = producer(node.inputs[0])
        if concat is None or concat.op != "Concat" or const_value(node.inputs[1]) is None:
            return None
        rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
        axis = concat.attrs.get("axis")
        wanted = 1 if node.op == "Conv" else -1
        if rank is None or axis % rank != wanted % rank:
            return None
        widths = [t.shape[axis] if t.shape is not None and isinstance(t.shape[axis], int)
                  else None for t in concat.inputs]
        return _Split(node, concat, widths)

    def check(self, graph: gs.Graph, m: _Split) -> str | None:
        if m.node.op == "Conv" and m.node.attrs.get("group", 1) != 1:
            return "grouped Conv"
        if m.node.op == "MatMul" and const_value(m.node.inputs[1]).ndim != 2:
            return "MatMul weight is not 2-D"
        if None in m.widths:
            return "the width of a concatenated part is unknown"
        amax = [self.amax.get(t.name) for t in m.concat.inputs]
        if None in amax:
            return "a concatenated part has no calibrated range"
        ratio = max(amax) / max(min(amax), 1e-12)
        if ratio <= self.threshold:
            return f"part ranges within {self.threshold:g}× ({ratio:.2g}×)"
        return None

    def rewrite(self, graph: gs.Graph, m: _Split, ctx: PassContext) -> None:
        w = const_value(m.node.inputs[1])
        bias = m.node.inputs[2] if len(m.node.inputs) > 2 else None
        out, start, total = m.node.outputs[0], 0, None
        for i, (part, width) in enumerate(zip(m.concat.inputs, m.widths, strict=True)):
            piece = w[:, start:start + width] if m.node.op == "Conv" else w[start:start + width]
            start += width
            inputs = [part, gs.Constant(f"{m.node.name}/W{i}", np.ascontiguousarray(piece))]
            if bias is not None and i == 0:
                inputs.append(bias)
            y = gs.Variable(f"{m.node.name}/part{i}", dtype=np.float32)
            graph.nodes.append(gs.Node(m.node.op, f"{m.node.name}/part{i}", dict(m.node.attrs),
                                       inputs, [y]))
            if total is not None:
                last = i == len(m.widths) - 1
                s = out if last else gs.Variable(f"{m.node.name}/sum{i}", dtype=np.float32)
                graph.nodes.append(gs.Node("Add", f"{m.node.name}/add{i}", inputs=[total, y],
                                           outputs=[s]))
                y = s
            total = y
        m.node.outputs.clear()
