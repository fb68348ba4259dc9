"""Static checks that a quantized model is what TensorRT 11 can build (runs on the CPU).

TensorRT builds strongly typed networks only: INT8 comes from explicit, symmetric Q/DQ; it fuses
Q/DQ at the inputs of MatMul/Gemm/Conv (moving DQ forward and Q backward through layout ops); its
fused attention wants the scale on Q or K before the first batched MatMul; and its ONNX parser maps
an unknown node to a plugin named by op type, `plugin_version` and `plugin_namespace`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxvq.plugins.ops import PLUGIN_ATTRS

_GEMMS = {"MatMul", "Gemm", "Conv"}
_CUSTOM_DOMAIN = "com.onnxvq"
# DequantizeLinear outputs may reach their GEMM through ops TensorRT moves DQ across.
_TRANSPARENT = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"}


def trt_violations(model: onnx.ModelProto) -> list[str]:
    """Every rule the model breaks, as one line each (empty when TensorRT-ready)."""
    inits = {i.name: i for i in model.graph.initializer}
    from_plugin = {o for n in model.graph.node if n.domain == _CUSTOM_DOMAIN for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    out = []
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            out += _symmetric(n, inits)
        # A plugin's integer output goes back to float wherever the float graph needs it.
        if n.op_type == "DequantizeLinear" and n.input[0] not in from_plugin:
            out += _feeds_gemm(n, consumers)
        if n.domain == _CUSTOM_DOMAIN:
            out += _plugin_attrs(n)
        if n.op_type == "MatMul" and _is_scores(n, consumers):
            out += [f"{n.name}: attention scale applied after Q·Kᵀ (fold it into Q)"]
    return out


def _symmetric(n: onnx.NodeProto, inits) -> list[str]:
    if len(n.input) < 3 or n.input[2] not in inits:
        return [f"{n.name}: no constant zero point (TensorRT needs int8, zero point 0)"]
    zp = numpy_helper.to_array(inits[n.input[2]])
    if zp.dtype not in (np.int8, np.int32) or zp.any():
        return [f"{n.name}: zero point {zp.dtype} {zp.reshape(-1)[:3]} is not symmetric int8"]
    return []


def _feeds_gemm(n: onnx.NodeProto, consumers) -> list[str]:
    frontier = [n.output[0]]
    while frontier:
        for c in consumers.get(frontier.pop(), []):
            if c.op_type in _TRANSPARENT:
                frontier.append(c.output[0])
            elif c.op_type not in _GEMMS and c.domain != _CUSTOM_DOMAIN:
                return [f"{n.name}: DequantizeLinear feeds {c.op_type} {c.name}, not a GEMM"]
    return []


def _plugin_attrs(n: onnx.NodeProto) -> list[str]:
    attrs = {a.name: a.s.decode() for a in n.attribute if a.type == onnx.AttributeProto.STRING}
    return [f"{n.name}: attribute {k}={attrs.get(k)!r}, expected {v!r}"
            for k, v in PLUGIN_ATTRS.items() if attrs.get(k) != v]


def _is_scores(n: onnx.NodeProto, consumers) -> bool:
    users = consumers.get(n.output[0], [])
    if len(users) != 1 or users[0].op_type != "Mul":
        return False
    frontier = [users[0].output[0]]
    for _ in range(4):  # Mul -> [Add bias/mask] -> [Reshape] -> Softmax
        nxt = []
        for t in frontier:
            for c in consumers.get(t, []):
                if c.op_type == "Softmax":
                    return True
                if c.op_type in ("Add", "Reshape"):
                    nxt.append(c.output[0])
        frontier = nxt
    return False
