"""Small helpers over onnx-graphsurgeon graphs that every pass and the recogniser share."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

# Ops that move or reshape data without changing values: the recogniser looks through them.
LAYOUT_OPS = frozenset(
    {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Dropout", "Slice",
     "Gather", "Split", "Concat", "Expand", "Pad"}
)


def producer(t: gs.Tensor) -> gs.Node | None:
    return t.inputs[0] if t.inputs else None


def consumers(t: gs.Tensor) -> list[gs.Node]:
    return list(t.outputs)




def const_value(t: gs.Tensor) -> np.ndarray | None:
    """The value of a Constant tensor or of a Constant node's output, else None."""
    if isinstance(t, gs.Constant):
        return np.asarray(t.values)
    p = producer(t)
    if p is not None and p.op == "Constant" and "value" in p.attrs:
        v = p.attrs["value"]
        return np.asarray(v.values if isinstance(v, gs.Constant) else v)
    return None


def scalar(t: gs.Tensor) -> float | None:
    """A constant tensor holding a single number (any shape of size 1)."""
    v = const_value(t)
    if v is None or v.size != 1:
        return None
    return float(v.reshape(-1)[0])


def byte_quantizer_refusal(q: gs.Node, subject: str | None = None) -> str | None:
    """Why QuantizeLinear `q` is not a per-tensor uint8/int8 quantizer with constant scale and
    zero point (the only one the fused com.onnxvq epilogues take), or None. `subject` names the
    quantized tensor in the reason ("GELU output")."""
    s = const_value(q.inputs[1])
    zp = const_value(q.inputs[2]) if len(q.inputs) > 2 else None
    if s is None or s.size != 1 or zp is None or zp.size != 1:
        return "per-axis or non-constant quantization" + (f" of the {subject}" if subject else "")
    if zp.dtype not in (np.uint8, np.int8):
        return f"{subject + ' ' if subject else ''}quantized to {zp.dtype}, not uint8/int8"
    return None


def data_inputs(node: gs.Node) -> list[gs.Variable]:
    """Inputs that carry activations (not constants, not shape tensors of Reshape/Expand/...)."""
    ins = node.inputs
    if node.op in ("Reshape", "Expand", "Tile", "Squeeze", "Unsqueeze", "Slice", "Pad", "Split",
                   "ReduceMean", "Resize"):
        ins = ins[:1]
    elif node.op == "Gather":
        ins = ins[:1]
    return [t for t in ins if isinstance(t, gs.Variable) and const_value(t) is None]




def single_consumer(t: gs.Tensor, op: str | None = None) -> gs.Node | None:
    cs = consumers(t)
    if len(cs) != 1 or (op is not None and cs[0].op != op):
        return None
    return cs[0]


def sole_data_consumer(t: gs.Tensor, op: str | None = None) -> gs.Node | None:
    """Like `single_consumer`, ignoring Shape nodes (they read metadata, not values). For
    recognition only: a rewrite that removes `t` must still account for its Shape readers."""
    cs = [c for c in t.outputs if c.op != "Shape"]
    if len(cs) != 1 or (op is not None and cs[0].op != op):
        return None
    return cs[0]


def from_activation_matmul(t: gs.Tensor, limit: int = 8) -> bool:
    """Whether `t` comes, along first data inputs, from a MatMul of two activations (Q·Kᵀ):
    tells the scores side of an Add from the bias/mask side."""
    for _ in range(limit):
        p = producer(t)
        if p is None:
            return False
        if p.op == "MatMul":
            return len(data_inputs(p)) == 2
        ins = data_inputs(p)
        if not ins:
            return False
        t = ins[0]
    return False








def weight_of(node: gs.Node) -> gs.Constant | None:
    """The constant weight of a MatMul/Gemm/Conv (its second input), if it is constant."""
    if node.op not in ("MatMul", "Gemm", "Conv") or len(node.inputs) < 2:
        return None
    w = node.inputs[1]
    if isinstance(w, gs.Constant):
        return w
    p = producer(w)
    # Dynamo and TorchScript exports sometimes route shared weights through Identity/Transpose.
    while p is not None and p.op in ("Identity", "Transpose", "Cast") and p.inputs:
        if isinstance(p.inputs[0], gs.Constant):
            return p.inputs[0]
        p = producer(p.inputs[0])
    return None


def is_linear(node: gs.Node) -> bool:
    return node.op in ("MatMul", "Gemm") and weight_of(node) is not None
