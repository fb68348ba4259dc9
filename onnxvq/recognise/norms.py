"""RMSNorm (AIMv2, the Qwen3 / Gemma4 / DeepSeek vision encoders): x·γ / √(mean(x²) + ε) over
the channels, no mean subtraction. One RMSNormalization node (opset 23), or the decomposition
the exporters write at opsets 17-21 (torch's dynamo; timm's own `x * rsqrt(...)` too):

    x ─ Pow(x, 2) | Mul(x, x) ─ ReduceMean(last axis, keepdims) ─ Add(ε) ─ Sqrt ─ Reciprocal ─┐
    x ─────────────────────────────────────────────────────────────────────── Mul(x, ·) ─ [Mul(γ)]
                                                          (or Div(x, Sqrt(..)), Cast to fp32 around)

A norm is found at its last node (`rms_norm_at`); `norm_input` lets the block and residual walks
step through it as they step through a LayerNormalization. The nodes stay float: --pts's
IntLayerNorm is a LayerNorm (mean and variance), so it has nothing to replace here.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxvq.core.walk import const_value, data_inputs, producer, scalar
from onnxvq.recognise.structure import RmsNorm

_CAST = frozenset({"Cast"})


def rms_norm_at(end: gs.Node) -> RmsNorm | None:
    """The RMSNorm whose last node is `end` (the γ Mul when there is one), else None."""
    found = _match(end)
    return _record(end, *found) if found else None


def norm_input(node: gs.Node) -> gs.Tensor | None:
    """The normalised input of a LayerNormalization or of an RMSNorm ending at `node`."""
    if node.op == "LayerNormalization":
        return node.inputs[0]
    found = _match(node)
    return found[0] if found else None


def _match(end: gs.Node) -> tuple[gs.Tensor, tuple[str, ...]] | None:
    if end.op == "RMSNormalization":
        return end.inputs[0], (end.name,)
    if end.op not in ("Mul", "Div"):
        return None
    ins = data_inputs(end)
    if end.op == "Mul" and len(ins) == 1 and const_value(_other(end, ins[0])) is not None:
        inner = producer(_skip_casts(ins[0]))  # the γ Mul: the normalisation before it
        found = _normalise(inner) if inner is not None else None
        return (found[0], (*found[1], end.name)) if found else None
    return _normalise(end)


def _normalise(node: gs.Node) -> tuple[gs.Tensor, tuple[str, ...]] | None:
    """(x, the nodes) when `node` is x·Reciprocal(Sqrt(mean(x²) + ε)) or x / Sqrt(...)."""
    ins = [i for i in node.inputs if isinstance(i, gs.Variable)]
    if node.op not in ("Mul", "Div") or len(ins) != 2:
        return None
    for x, r in ((ins[0], ins[1]), (ins[1], ins[0])) if node.op == "Mul" else ((ins[0], ins[1]),):
        chain = _rsqrt_chain(r, want_reciprocal=node.op == "Mul")
        centred = producer(x) is not None and producer(x).op == "Sub"  # a LayerNorm's x - μ
        if chain is not None and not centred and _skip_casts(chain[0]) is _skip_casts(x):
            return x, (*chain[1], node.name)
    return None


def _rsqrt_chain(t: gs.Tensor, want_reciprocal: bool) -> tuple[gs.Tensor, list[str]] | None:
    """Back from 1/√(mean(x²)+ε) (or √(..) under a Div): (x, the chain's nodes) or None."""
    nodes: list[str] = []
    ops = (("Reciprocal",) if want_reciprocal else ()) + ("Sqrt", "Add", "ReduceMean")
    for op in ops:
        p = producer(_skip_casts(t, nodes))
        if p is None or p.op != op:
            return None
        nodes.append(p.name)
        if op == "Add":
            if len(data_inputs(p)) != 1 or scalar(_other(p, data_inputs(p)[0])) is None:
                return None  # ε
        if op == "ReduceMean" and not _last_axis(p):
            return None
        t = data_inputs(p)[0]
    sq = producer(_skip_casts(t, nodes))
    if sq is None:
        return None
    nodes.append(sq.name)
    if sq.op == "Pow" and scalar(sq.inputs[1]) == 2.0:
        return sq.inputs[0], nodes
    if sq.op == "Mul" and len(sq.inputs) == 2 and sq.inputs[0] is sq.inputs[1]:
        return sq.inputs[0], nodes
    return None


def _last_axis(reduce: gs.Node) -> bool:
    axes = reduce.attrs.get("axes")
    if axes is None and len(reduce.inputs) > 1:
        value = const_value(reduce.inputs[1])
        axes = None if value is None else value.reshape(-1).tolist()
    rank = len(reduce.inputs[0].shape) if reduce.inputs[0].shape else None
    last = {-1} | ({rank - 1} if rank else set())
    return reduce.attrs.get("keepdims", 1) == 1 and axes is not None and len(axes) == 1 \
        and int(axes[0]) in last


def _skip_casts(t: gs.Tensor, nodes: list[str] | None = None) -> gs.Tensor:
    """Through the fp32 Casts of timm's RmsNormFp32 / the exporters' upcasts."""
    for _ in range(4):
        p = producer(t)
        if p is None or p.op not in _CAST:
            return t
        if nodes is not None:
            nodes.append(p.name)
        t = p.inputs[0]
    return t


def _other(node: gs.Node, t: gs.Tensor) -> gs.Tensor:
    return next((i for i in node.inputs if i is not t), t)


def _record(end: gs.Node, x: gs.Tensor, nodes: tuple[str, ...]) -> RmsNorm:
    shape = x.shape
    channels = shape[-1] if shape and isinstance(shape[-1], int) else None
    return RmsNorm(end.name, x.name, end.outputs[0].name, channels, tuple(dict.fromkeys(nodes)))
