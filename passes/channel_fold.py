"""Folding a per-channel rescale of an activation into the Linears that consume it (RepQ-ViT).

An activation x [..., C] is quantized per channel with (s_c, z_c). With s~ = mean(s),
z~ = round(mean(z)), r = s / s~ and b = s~ (z~ - z), the rescaled x' = x / r - b quantizes per
tensor with (s~, z~) to the same integer codes: round(x'_c / s~) + z~ = round(x_c / s_c) + z_c.
Every consumer that needs x back gets it exactly from x = (x' + b) r:

    Linear:  x @ W + bias = x' @ W' + (b @ W' + bias)    W' = diag(r) W   (folded, free)
    other:   x = Mul(Add(x', b), r)                       (two float elementwise ops)

`find_targets` walks from x through layout ops that keep the channel axis last (Transpose with the
last axis in place, Reshape/Flatten/Squeeze/Unsqueeze keeping the last dim, Gather/Slice off the
last axis) to the consumers: foldable Linears (MatMul/Gemm with a constant 2-D weight taking x as
their first input), Shape readers (values unused) and the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.walk import const_value

_KEEP_LAST = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout")


@dataclass(frozen=True)
class Reparam:
    """The per-tensor quantizer (scale, zero_point) and the per-channel factors r, b."""

    r: np.ndarray
    b: np.ndarray
    scale: float
    zero_point: int


def reparam_factors(scale: np.ndarray, zero_point: np.ndarray, zero: int | None = None,
                    ) -> Reparam:
    """`zero` fixes z~ (0 for TensorRT's symmetric int8: the per-channel asymmetric codes then
    sit in [-128, 127] around 0, their offsets all in b)."""
    s = np.asarray(scale, dtype=np.float64)
    z = np.asarray(zero_point, dtype=np.float64)
    s_t = float(np.float32(s.mean()))  # the stored float32 scale is what the codes are taken with
    z_t = int(np.round(z.mean())) if zero is None else zero
    return Reparam(s / s_t, s_t * (z_t - z), s_t, z_t)


def centering(lo: np.ndarray, hi: np.ndarray) -> Reparam:
    """x' = x - c, c the centre of each channel's range: the offset a symmetric quantizer cannot
    represent moves into the fold (r = 1; the scale is calibrated afterwards on x')."""
    c = (np.asarray(lo, np.float64) + np.asarray(hi, np.float64)) / 2
    return Reparam(np.ones_like(c), c, float("nan"), 0)


def as_reparam(qp) -> Reparam:
    """`ctx.channel_qparams` values: a ready `Reparam`, or per-channel (scale, zero_point[, z~])."""
    return qp if isinstance(qp, Reparam) else reparam_factors(*qp)


@dataclass(frozen=True)
class ReparamRecord:
    """What a reparameterise pass folded: the per-tensor quantizer its Linear inputs now take."""

    node: str  # the LayerNorm, or the reparameterised tensor
    tensors: tuple[str, ...]  # the Linear input tensors whose codes are the per-channel ones
    scale: float
    zero_point: int
    linears: tuple[str, ...]
    compensated: int  # non-Linear consumers given the original values back

    def to_dict(self) -> dict:
        return {"tensors": list(self.tensors), "scale": self.scale,
                "zero_point": self.zero_point, "linears": list(self.linears),
                "compensated": self.compensated}


@dataclass
class Targets:
    linears: list[tuple[gs.Node, gs.Tensor]] = field(default_factory=list)
    others: list[tuple[gs.Node, gs.Tensor]] = field(default_factory=list)
    escapes: bool = False  # a reached tensor is a graph output (its values must stay)


def find_targets(t: gs.Tensor, channels: int, graph_outputs: frozenset = frozenset()) -> Targets:
    found, stack = Targets(), [t]
    while stack:
        cur = stack.pop()
        found.escapes |= cur.name in graph_outputs
        for node in list(cur.outputs):
            if node.op == "Shape":
                continue
            if foldable_linear(node, cur, channels):
                found.linears.append((node, cur))
            elif _keeps_channels(node, cur, channels):
                stack.append(node.outputs[0])
            else:
                found.others.append((node, cur))
    return found


def foldable_linear(node: gs.Node, x: gs.Tensor, channels: int) -> bool:
    if node.op not in ("MatMul", "Gemm") or len(node.inputs) < 2 or node.inputs[0] is not x:
        return False
    w = node.inputs[1]
    if not isinstance(w, gs.Constant) or w.values.ndim != 2:
        return False
    if node.op == "Gemm":
        a = node.attrs
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            return False
        if len(node.inputs) > 2 and not isinstance(node.inputs[2], gs.Constant):
            return False
        return w.shape[1 if a.get("transB", 0) else 0] == channels
    return w.shape[0] == channels


def _keeps_channels(node: gs.Node, x: gs.Tensor, channels: int) -> bool:
    if len(node.outputs) != 1 or not node.inputs or node.inputs[0] is not x:
        return False
    shape_in, shape_out = x.shape, node.outputs[0].shape
    if not shape_in or not shape_out or shape_in[-1] != channels or shape_out[-1] != channels:
        return False
    last = len(shape_in) - 1
    if node.op == "Transpose":
        perm = node.attrs.get("perm")
        return perm is not None and list(perm)[-1] == last
    if node.op == "Gather":
        return node.attrs.get("axis", 0) % len(shape_in) != last
    if node.op == "Slice":
        axes = const_value(node.inputs[3]) if len(node.inputs) > 3 else None
        return axes is not None and all(int(a) % len(shape_in) != last for a in axes.ravel())
    return node.op in _KEEP_LAST


def fold_linear(graph: gs.Graph, node: gs.Node, rp: Reparam) -> None:
    """W' = diag(r) W on the input axis; bias' = bias + b @ W' (a bias Add is created if none)."""
    w = np.asarray(node.inputs[1].values, dtype=np.float64)
    trans = node.op == "Gemm" and node.attrs.get("transB", 0)
    w2 = w * rp.r[None, :] if trans else w * rp.r[:, None]
    shift = (w2 @ rp.b) if trans else (rp.b @ w2)
    node.inputs[1] = gs.Constant(f"{node.name}/reparam_W", w2.astype(np.float32))
    add_bias(graph, node, shift, "reparam")


def add_bias(graph: gs.Graph, node: gs.Node, shift: np.ndarray, tag: str) -> None:
    """bias += shift on a MatMul/Gemm (its bias Add, the Gemm's C, or a new Add); `tag` names
    the new constants (one call per tag and node)."""
    if node.op == "Gemm":
        bias = node.inputs[2].values if len(node.inputs) > 2 else np.zeros(shift.shape)
        new = gs.Constant(f"{node.name}/{tag}_bias", (bias + shift).astype(np.float32))
        if len(node.inputs) > 2:
            node.inputs[2] = new
        else:
            node.inputs.append(new)
        return
    _add_matmul_bias(graph, node, shift, tag)


def _add_matmul_bias(graph: gs.Graph, node: gs.Node, shift: np.ndarray, tag: str) -> None:
    y = node.outputs[0]
    adds = [c for c in y.outputs if c.op == "Add"]
    if len(y.outputs) == 1 and adds and y not in graph.outputs:
        add = adds[0]
        k = 1 if add.inputs[0] is y else 0
        bias = add.inputs[k]
        if isinstance(bias, gs.Constant) and bias.values.size == shift.size:
            value = bias.values.astype(np.float64) + shift.reshape(bias.values.shape)
            add.inputs[k] = gs.Constant(f"{add.name}/{tag}_bias", value.astype(np.float32))
            return
    pre = gs.Variable(f"{y.name}/pre_{tag}_bias", dtype=y.dtype, shape=y.shape)
    node.outputs[0] = pre
    graph.nodes.append(gs.Node("Add", name=f"{node.name}/{tag}_bias", outputs=[y], inputs=[
        pre, gs.Constant(f"{node.name}/{tag}_shift", shift.astype(np.float32))]))


def compensate(graph: gs.Graph, others: list[tuple[gs.Node, gs.Tensor]], rp: Reparam) -> int:
    """Give each non-Linear consumer x = (x' + b) r back; one Add + Mul per distinct tensor."""
    restored: dict[str, gs.Variable] = {}
    for node, t in others:
        if t.name not in restored:
            restored[t.name] = restore(graph, t, rp)
        for j, i in enumerate(node.inputs):
            if i is t:
                node.inputs[j] = restored[t.name]
    return len(restored)


def restore(graph: gs.Graph, t: gs.Tensor, rp: Reparam) -> gs.Variable:
    mid = gs.Variable(f"{t.name}/unshift", dtype=t.dtype, shape=t.shape)
    graph.nodes.append(gs.Node("Add", name=f"{t.name}/reparam_unshift", outputs=[mid], inputs=[
        t, gs.Constant(f"{t.name}/reparam_b", rp.b.astype(np.float32))]))
    if np.all(rp.r == 1):  # a centring: the Add alone restores x
        return mid
    out = gs.Variable(f"{t.name}/unscaled", dtype=t.dtype, shape=t.shape)
    graph.nodes.append(gs.Node("Mul", name=f"{t.name}/reparam_unscale", outputs=[out], inputs=[
        mid, gs.Constant(f"{t.name}/reparam_r", rp.r.astype(np.float32))]))
    return out
