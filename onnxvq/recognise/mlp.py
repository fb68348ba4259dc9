"""MLPs around a recognised activation unit (activations.py):

    fc1 ─[bias]─ act ─[Dropout/Identity/Cast]─[LayerNorm]─ fc2    plain (GELU, ReLU, SiLU, ...);
                                                                  the norm: BEiT-3's sub-LN
    fc1 ─[bias]─ Split/Slice ─ act(x₁) · x₂ ─ fc2                  gated: timm GluMlp / SwiGLU
                                                                  with the packed fc1 (EVA-02)
    fc1_g ─ act(·) · fc1_x ─ fc2, both linears on the same input   gated, two linears
    fc1 ─[bias]─ tokens→map ─ depthwise Conv ─ map→tokens ─ act ─ fc2
                                                    PVTv2's MlpWithDepthwiseConv (a 3x3 conv
                                                    mixing neighbouring tokens inside the MLP)

The gate product's Mul is recorded (`Mlp.gate`): placement quantizes both its operands; the
depthwise Conv (`Mlp.conv`) is quantized as any other Conv.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxvq.core.walk import (
    LAYOUT_OPS,
    data_inputs,
    is_linear,
    producer,
    sole_data_consumer,
    weight_of,
)
from onnxvq.recognise.blocks import linear_info
from onnxvq.recognise.structure import Activation, Mlp

# between the activation (or the gate product) and fc2: value-preserving ops, and the LayerNorm
# of BEiT-3's sub-LN MLP (timm's `scale_mlp_norm`: fc2(norm(act(fc1(x)))))
_MLP_PATH = frozenset({"Dropout", "Identity", "Cast", "LayerNormalization"})


def mlp_of(act: Activation, t_in: gs.Tensor, t_out: gs.Tensor) -> Mlp | None:
    """The MLP the activation unit sits in, or None when a linear is missing on either side."""
    fc1, conv = _producing_linear(t_in)
    fc2 = _next_compute(t_out)
    gate, fc1_x = None, None
    if fc1 is not None and fc2 is not None and fc2.op == "Mul" and len(data_inputs(fc2)) == 2:
        other = next((i for i in data_inputs(fc2) if i is not t_out), None)
        x2, x2_conv = _producing_linear(other) if other is not None else (None, None)
        if x2 is None or x2_conv or conv or not (x2 is fc1 or x2.inputs[0] is fc1.inputs[0]):
            return None
        gate, fc2 = fc2, _next_compute(fc2.outputs[0])
        fc1_x = None if x2 is fc1 else linear_info(x2)
    if fc1 is None or fc2 is None or not is_linear(fc2):
        return None
    return Mlp(linear_info(fc1), act, linear_info(fc2), gate.name if gate else None,
               conv.name if conv else None, fc1_x)


def _producing_linear(t: gs.Tensor) -> tuple[gs.Node | None, gs.Node | None]:
    """(the linear behind `t`, the depthwise Conv on the way or None) through its bias Add, a
    GLU's Split/Slice of the packed fc1, and one depthwise Conv between the layout ops that
    turn the tokens into a map and back (PVTv2)."""
    conv, layout = None, False
    for _ in range(12):
        p = producer(t)
        if p is None:
            return None, None
        if is_linear(p):  # layout ops only around a conv: a plain MLP's fc1 feeds act directly
            return (p, conv) if conv is not None or not layout else (None, None)
        if conv is None and _depthwise(p):
            conv = p
        elif len(data_inputs(p)) != 1 or p.op not in LAYOUT_OPS and p.op != "Add":
            return None, None
        layout |= p.op in LAYOUT_OPS and p.op not in ("Split", "Slice")
        t = data_inputs(p)[0]
    return None, None


def _depthwise(node: gs.Node) -> bool:
    """A Conv with one input channel per group over a single activation input."""
    w = weight_of(node)
    group = node.attrs.get("group", 1) if node.op == "Conv" else 1
    return w is not None and group > 1 and w.shape[1] == 1 and len(data_inputs(node)) == 1


def _next_compute(t: gs.Tensor) -> gs.Node | None:
    """The sole consumer of `t` past value-preserving Dropout/Identity/Cast nodes and a
    sub-LN LayerNorm."""
    for _ in range(12):
        c = sole_data_consumer(t)
        if c is None or c.op not in _MLP_PATH:
            return c
        t = c.outputs[0]
    return None
