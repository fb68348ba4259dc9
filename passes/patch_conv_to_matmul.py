"""Run a quantized patch-embedding Conv (kernel = stride, no padding) as an int8 MatMul.

ONNX Runtime has no int8 convolution with a float output, so DQ → Conv runs as a float Conv over
dequantized weights (slower than the FP32 model's). Cutting the image into patches is a pure
re-layout, done here on the uint8 codes:

    x_q ─DQ─Conv(DQ(W_q), b)─Reshape[B,O,hw]─Transpose(0,2,1)      [B, hw, O]
    ->  x_q ─Reshape[B,C,h,p,w,p]─Transpose(0,2,4,1,3,5)─Reshape[B,hw,Cpp]
            ─DQ─MatMul(DQ(W_q'))─Add(b)

Matches: Conv with kernel == strides, zero pads, unit dilation, one group; input DQ per-tensor of
         8-bit codes with a static [C, H, W] (H, W multiples of the stride); weight DQ of a
         constant int8 kernel (per output channel, axis 0); bias absent, float or DQ(int32); its
         output read by one rank-3 Reshape to [B, O, h·w] (and Shape nodes), then Transpose(0,2,1).
Refuses: overlapping or padded kernels, dynamic spatial sizes, any other consumer layout.
Emits:   the re-layout on uint8, then MatMul(DQ(x_patches), DQ(W_q reshaped to [C·p·p, O], axis 1))
         and the bias Add; `ort-matmul-bias` then makes it one MatMulIntegerToFloat. The int32
         products are the Conv's, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import const_value, producer
from onnxvq.passes.ort_domain import rewire


@dataclass
class _Patch:
    conv: gs.Node
    dq_x: gs.Node
    w: np.ndarray  # int8 [O, C, p, p]
    w_scale: np.ndarray
    bias: np.ndarray | None
    transpose: gs.Node
    chw: tuple[int, int, int]


class PatchConvToMatMul(RewritePass):
    id = "patch-conv-to-matmul"
    matches = "quantized non-overlapping Conv → flatten → Transpose(0,2,1)"
    emits = "uint8 patch re-layout + DQ MatMul + bias Add"
    anchor_ops = ("Conv",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _Patch | None:
        dx, dw = producer(node.inputs[0]), producer(node.inputs[1])
        if dx is None or dw is None or dx.op != "DequantizeLinear" or dw.op != "DequantizeLinear":
            return None
        w, ws = const_value(dw.inputs[0]), const_value(dw.inputs[1])
        if w is None or ws is None or w.dtype != np.int8 or w.ndim != 4:
            return None
        readers = [c for c in node.outputs[0].outputs if c.op != "Shape"]
        if len(readers) != 1 or readers[0].op != "Reshape":
            return None
        ts = readers[0].outputs[0].outputs
        perm = list(ts[0].attrs.get("perm", [])) if len(ts) == 1 else []
        if len(ts) != 1 or ts[0].op != "Transpose" or perm != [0, 2, 1]:
            return None
        shape = next((t.shape for t in (dx.outputs[0], dx.inputs[0], _q_input(dx))
                      if t is not None and t.shape is not None and len(t.shape) == 4), None)
        chw = tuple(shape[1:]) if shape is not None else None
        return _Patch(node, dx, w, ws, _bias(node), ts[0], chw)

    def check(self, graph: gs.Graph, m: _Patch) -> str | None:
        a = m.conv.attrs
        p = m.w.shape[2]
        if list(a.get("kernel_shape", m.w.shape[2:])) != [p, p] or m.w.shape[3] != p:
            return "kernel is not square"
        if list(a.get("strides", [1, 1])) != [p, p] or any(a.get("pads", [0] * 4)):
            return "patches overlap or are padded"
        if any(d != 1 for d in a.get("dilations", [1, 1])) or a.get("group", 1) != 1:
            return "dilated or grouped Conv"
        if m.chw is None or not all(isinstance(d, int) for d in m.chw):
            return "input channels/height/width are not static"
        c, h, w = m.chw
        if h % p or w % p or c != m.w.shape[1]:
            return "image size is not a multiple of the patch"
        if not _flattens(producer(m.transpose.inputs[0]), m.conv.outputs[0]):
            return "Conv output is not flattened to [B, O, h·w]"
        if m.bias is False:
            return "bias is not constant"
        sx = const_value(m.dq_x.inputs[1])
        if sx is None or sx.size != 1 or m.w_scale.size not in (1, m.w.shape[0]):
            return "per-axis input scale or unexpected weight scale"
        return None

    def rewrite(self, graph: gs.Graph, m: _Patch, ctx: PassContext) -> None:
        (c, h, w), p, o = m.chw, m.w.shape[2], m.w.shape[0]
        name = m.conv.name
        codes = m.dq_x.inputs[0]
        t = _reshape(graph, codes, [-1, c, h // p, p, w // p, p], f"{name}/patches6d")
        t6 = gs.Variable(f"{name}/patches_t", dtype=codes.dtype)
        graph.nodes.append(gs.Node("Transpose", name=f"{name}/PatchTranspose",
                                   attrs={"perm": [0, 2, 4, 1, 3, 5]}, inputs=[t], outputs=[t6]))
        flat = _reshape(graph, t6, [-1, (h // p) * (w // p), c * p * p], f"{name}/patches")
        x = gs.Variable(f"{name}/patches_dq", dtype=np.float32)
        graph.nodes.append(gs.Node("DequantizeLinear", name=f"{name}/PatchDequantize",
                                   inputs=[flat, *m.dq_x.inputs[1:]], outputs=[x]))
        wq = np.ascontiguousarray(m.w.reshape(o, -1).T)
        scale = np.broadcast_to(m.w_scale.reshape(-1), (o,)).astype(np.float32)
        wd = gs.Variable(f"{name}/W2d_dq", dtype=np.float32)
        graph.nodes.append(gs.Node(
            "DequantizeLinear", name=f"{name}/W2d/DequantizeLinear", attrs={"axis": 1},
            inputs=[gs.Constant(f"{name}/W2d/quantized", wq),
                    gs.Constant(f"{name}/W2d/scale", scale),
                    gs.Constant(f"{name}/W2d/zero_point", np.zeros(o, np.int8))], outputs=[wd]))
        y = gs.Variable(f"{name}/patch_matmul", dtype=np.float32)
        graph.nodes.append(gs.Node("MatMul", name=f"{name}/MatMul", inputs=[x, wd], outputs=[y]))
        if m.bias is not None:
            yb = gs.Variable(f"{name}/patch_matmul_bias", dtype=np.float32)
            graph.nodes.append(gs.Node("Add", name=f"{name}/Add", outputs=[yb], inputs=[
                y, gs.Constant(f"{name}/bias", m.bias.astype(np.float32))]))
            y = yb
        rewire(m.transpose.outputs[0], y, graph)
        m.transpose.outputs.clear()


def _flattens(reshape: gs.Node, conv_out: gs.Tensor) -> bool:
    """Whether `reshape` is flatten(2) of the [B, O, h, w] Conv output: a constant target
    [B|0|-1, O, h·w|-1], or TorchScript's computed Concat(Slice(Shape(conv_out), 0, 2), [-1])."""
    known = reshape.outputs[0].shape
    cs = conv_out.shape
    if known is not None and len(known) == 3 and all(isinstance(d, int) for d in known[1:]) and \
            cs is not None and len(cs) == 4 and all(isinstance(d, int) for d in cs[1:]):
        return list(known[1:]) == [cs[1], cs[2] * cs[3]]
    target = const_value(reshape.inputs[1])
    if target is not None:
        return target.size == 3 and int(target[2]) == -1 and int(target[0]) in (0, -1)
    cat = producer(reshape.inputs[1])
    if cat is None or cat.op != "Concat" or len(cat.inputs) != 2:
        return False
    sl, tail = producer(cat.inputs[0]), const_value(cat.inputs[1])
    if sl is None or sl.op != "Slice" or tail is None or tail.reshape(-1).tolist() != [-1]:
        return False
    sh = producer(sl.inputs[0])
    starts, ends = const_value(sl.inputs[1]), const_value(sl.inputs[2])
    return (sh is not None and sh.op == "Shape" and sh.inputs[0] is conv_out
            and starts is not None and ends is not None
            and starts.reshape(-1).tolist() == [0] and ends.reshape(-1).tolist() == [2])


def _q_input(dq: gs.Node) -> gs.Tensor | None:
    q = producer(dq.inputs[0])
    return q.inputs[0] if q is not None and q.op == "QuantizeLinear" else None


def _bias(conv: gs.Node):
    """The float bias, None when there is none, False when it is not constant."""
    if len(conv.inputs) < 3:
        return None
    b = conv.inputs[2]
    d = producer(b)
    if d is not None and d.op == "DequantizeLinear":
        q, s = const_value(d.inputs[0]), const_value(d.inputs[1])
        return False if q is None or s is None else q.astype(np.float64) * s.astype(np.float64)
    v = const_value(b)
    return False if v is None else v


def _reshape(graph: gs.Graph, x: gs.Tensor, shape: list[int], name: str) -> gs.Variable:
    y = gs.Variable(name, dtype=x.dtype)
    graph.nodes.append(gs.Node("Reshape", name=f"{name}/Reshape", outputs=[y], inputs=[
        x, gs.Constant(f"{name}/shape", np.array(shape, np.int64))]))
    return y
