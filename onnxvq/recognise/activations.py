"""Activation units as exporters emit them, each recognised as one unit.

    Relu / Gelu (opset 20)                     single node
    x ─Div(√2)─Erf─Add(1)─Mul(x)─Mul(0.5)      Erf GELU (TorchScript); the 0.5 may come first
    x ─Pow(3)─Mul(0.044715)─Add(x)─Mul(√(2/π))─Tanh─Add(1)─Mul(x)─Mul(0.5)   tanh GELU
    x ─Sigmoid─Mul(x)                          SiLU / Swish (MobileViT, EVA-02's SwiGLU)
    x ─Mul(1.702)─Sigmoid─Mul(x)               QuickGELU (OpenAI CLIP, Hugging Face CLIP)
    HardSwish (opset 14), x ─HardSigmoid─Mul(x)   Hardswish (LeViT)
    x ─Relu─Pow(2) (or r·r)─Mul(s)─Add(b)     StarReLU s·relu(x)² + b (MetaFormer: CAFormer)
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxvq.core.walk import data_inputs, producer, scalar, sole_data_consumer
from onnxvq.recognise.structure import Activation

Unit = tuple[Activation, gs.Tensor, gs.Tensor]


def match_activation(node: gs.Node) -> Unit | None:
    if node.op == "Relu":
        star = _star_relu(node)
        return star or _unit("relu", [node], node.inputs[0], node.outputs[0])
    if node.op == "Gelu":
        return _unit("gelu", [node], node.inputs[0], node.outputs[0])
    if node.op == "Erf":
        return _gelu_erf(node)
    if node.op == "Tanh":
        return _gelu_tanh(node)
    if node.op == "HardSwish":
        return _unit("hardswish", [node], node.inputs[0], node.outputs[0])
    if node.op in ("Sigmoid", "HardSigmoid"):
        return _gated(node, "silu" if node.op == "Sigmoid" else "hardswish")
    return None


def _gated(gate: gs.Node, kind: str) -> Unit | None:
    """x · σ(x): the gate's only consumer is a Mul whose other input is the gate's input."""
    x = gate.inputs[0]
    mul = sole_data_consumer(gate.outputs[0], "Mul")
    if mul is None:
        return None
    if x in mul.inputs:
        return _unit(kind, [gate, mul], x, mul.outputs[0])
    pre = producer(x)  # x · σ(1.702·x): QuickGELU, a GELU approximation
    if kind != "silu" or pre is None or pre.op != "Mul" or len(data_inputs(pre)) != 1:
        return None
    factor = next((v for v in _scalars(pre)), None)
    if factor is None or abs(factor - 1.702) > 1e-3 or data_inputs(pre)[0] not in mul.inputs:
        return None
    return _unit("gelu_quick", [pre, gate, mul], data_inputs(pre)[0], mul.outputs[0])


def _star_relu(relu: gs.Node) -> Unit | None:
    """s·relu(x)² + b with scalar s and b (timm's StarReLU), the square a Pow(2) or r·r."""
    r = relu.outputs[0]
    readers = list({id(c): c for c in r.outputs if c.op != "Shape"}.values())  # r·r reads twice
    sq = readers[0] if len(readers) == 1 and readers[0].op in ("Pow", "Mul") else None
    if sq is None or not (sq.op == "Pow" and sq.inputs[0] is r and scalar(sq.inputs[1]) == 2.0
                          or sq.op == "Mul" and sq.inputs[0] is r and sq.inputs[1] is r):
        return None
    mul = sole_data_consumer(sq.outputs[0], "Mul")
    add = None if mul is None or len(_scalars(mul)) != 1 else \
        sole_data_consumer(mul.outputs[0], "Add")
    if add is None or len(_scalars(add)) != 1:
        return None
    return _unit("star_relu", [relu, sq, mul, add], relu.inputs[0], add.outputs[0])


def _unit(kind: str, nodes: list[gs.Node], t_in: gs.Tensor, t_out: gs.Tensor) -> Unit:
    return Activation(kind, tuple(n.name for n in nodes), t_in.name, t_out.name), t_in, t_out


def _gelu_erf(erf: gs.Node) -> Unit | None:
    pre = producer(erf.inputs[0])
    if pre is None or pre.op not in ("Div", "Mul") or len(data_inputs(pre)) != 1:
        return None
    x = data_inputs(pre)[0]
    tail = _gelu_tail(erf.outputs[0], x)
    if tail is None:
        return None
    nodes, out = tail
    return _unit("gelu_erf", [pre, erf, *nodes], x, out)


def _gelu_tanh(tanh: gs.Node) -> Unit | None:
    scale = producer(tanh.inputs[0])
    inner = producer(data_inputs(scale)[0]) if scale is not None and scale.op == "Mul" else None
    if inner is None or inner.op != "Add" or len(data_inputs(inner)) != 2:
        return None
    for x, cubic in ((inner.inputs[0], inner.inputs[1]), (inner.inputs[1], inner.inputs[0])):
        cube_nodes = _cubic(cubic, x)
        if cube_nodes is None:
            continue
        tail = _gelu_tail(tanh.outputs[0], x)
        if tail is None:
            return None
        nodes, out = tail
        return _unit("gelu_tanh", [*cube_nodes, inner, scale, tanh, *nodes], x, out)
    return None


def _cubic(t: gs.Tensor, x: gs.Tensor) -> list[gs.Node] | None:
    """0.044715·x³ as Mul(c, Pow(x, 3)) (or x·x·x)."""
    mul = producer(t)
    if mul is None or mul.op != "Mul" or len(data_inputs(mul)) != 1:
        return None
    pw = producer(data_inputs(mul)[0])
    if pw is not None and pw.op == "Pow" and pw.inputs[0] is x and scalar(pw.inputs[1]) == 3.0:
        return [pw, mul]
    # x·(x·x), as torch 2.14's TorchScript export writes F.gelu(approximate="tanh") (MaxViT)
    if pw is not None and pw.op == "Mul" and x in pw.inputs:
        sq = producer(pw.inputs[1] if pw.inputs[0] is x else pw.inputs[0])
        if sq is not None and sq.op == "Mul" and sq.inputs[0] is x and sq.inputs[1] is x:
            return [sq, pw, mul]
    return None


def _gelu_tail(t: gs.Tensor, x: gs.Tensor) -> tuple[list[gs.Node], gs.Tensor] | None:
    """Add(1) then the two Muls by x and by 0.5, in either order."""
    add = sole_data_consumer(t, "Add")
    if add is None or scalar(add.inputs[1] if add.inputs[0] is t else add.inputs[0]) != 1.0:
        return None
    nodes, out = [add], add.outputs[0]
    m1 = sole_data_consumer(out, "Mul")
    if m1 is None:
        return None
    other = m1.inputs[1] if m1.inputs[0] is out else m1.inputs[0]
    nodes.append(m1)
    if other is x:  # (1+erf)·x then ·0.5
        m2 = sole_data_consumer(m1.outputs[0], "Mul")
        half = None if m2 is None else (
            m2.inputs[1] if m2.inputs[0] is m1.outputs[0] else m2.inputs[0])
        if half is None or scalar(half) != 0.5:
            return None
        return nodes + [m2], m2.outputs[0]
    half = producer(other)  # (x·0.5)·(1+erf)
    if half is not None and half.op == "Mul" and x in half.inputs and 0.5 in _scalars(half):
        return [half, *nodes], m1.outputs[0]
    if scalar(other) == 0.5:  # (1+erf)·0.5 then ·x
        m2 = sole_data_consumer(m1.outputs[0], "Mul")
        if m2 is not None and x in m2.inputs:
            return nodes + [m2], m2.outputs[0]
    return None


def _scalars(node: gs.Node) -> list[float]:
    return [v for v in (scalar(i) for i in node.inputs) if v is not None]


def match_exact_gelu(node):
    """`match_activation` for an erf GELU only (an Erf pattern, or a Gelu node without the tanh
    approximation): what the ORT GELU lowerings may replace; None otherwise."""
    unit = match_activation(node)
    if unit is None or unit[0].kind not in ("gelu_erf", "gelu"):
        return None
    if node.op == "Gelu" and node.attrs.get("approximate", "none") != "none":
        return None
    return unit
