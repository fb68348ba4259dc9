"""MLPs around a recognised activation unit (activations.py):

    fc1 ─[bias]─ act ─[Dropout/Identity/Cast]─ fc2                plain (GELU, ReLU, SiLU, ...)
    fc1 ─[bias]─ Split/Slice ─ act(x₁) · x₂ ─ fc2                  gated: timm GluMlp / SwiGLU
                                                                  with the packed fc1 (EVA-02)
    fc1_g ─ act(·) · fc1_x ─ fc2, both linears on the same input   gated, two linears

The gate product's Mul is recorded (`Mlp.gate`): placement quantizes both its operands.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxvq.core.walk import data_inputs, is_linear, producer, sole_data_consumer
from onnxvq.recognise.blocks import linear_info
from onnxvq.recognise.structure import Activation, Mlp

_MLP_PATH = frozenset({"Dropout", "Identity", "Cast"})


def mlp_of(act: Activation, t_in: gs.Tensor, t_out: gs.Tensor) -> Mlp | None:
    """The MLP the activation unit sits in, or None when a linear is missing on either side."""
    fc1 = _producing_linear(t_in)
    fc2 = _next_compute(t_out)
    gate = None
    if fc1 is not None and fc2 is not None and fc2.op == "Mul" and len(data_inputs(fc2)) == 2:
        other = next((i for i in data_inputs(fc2) if i is not t_out), None)
        x2 = _producing_linear(other) if other is not None else None
        if x2 is None or not (x2 is fc1 or x2.inputs[0] is fc1.inputs[0]):
            return None
        gate, fc2 = fc2, _next_compute(fc2.outputs[0])
    if fc1 is None or fc2 is None or not is_linear(fc2):
        return None
    return Mlp(linear_info(fc1), act, linear_info(fc2), gate.name if gate else None)


def _producing_linear(t: gs.Tensor) -> gs.Node | None:
    """The linear behind `t` through its bias Add and a GLU's Split/Slice of the packed fc1."""
    for _ in range(4):
        p = producer(t)
        if p is None:
            return None
        if is_linear(p):
            return p
        if len(data_inputs(p)) != 1 or p.op not in ("Add", "Split", "Slice"):
            return None
        t = data_inputs(p)[0]
    return None


def _next_compute(t: gs.Tensor) -> gs.Node | None:
    """The sole consumer of `t` past value-preserving Dropout/Identity/Cast nodes."""
    for _ in range(12):
        c = sole_data_consumer(t)
        if c is None or c.op not in _MLP_PATH:
            return c
        t = c.outputs[0]
    return None
