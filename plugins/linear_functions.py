"""ONNX local function of QuantizedLinear (domain com.onnxvq): the int8 Linear in standard ops.

    acc = MatMulInteger(A, B, a_zero_point, b_zero_point)        int32, exact
    Y   = Cast(acc, FLOAT) * (a_scale * b_scale) + bias            float32, one rounding a step

so a model carrying the op runs in any ONNX Runtime: without onnxvq's native library ORT inlines
the body (slower than MatMulIntegerToFloat, but with the same outputs bit for bit).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from onnxvq.plugins import fused_functions
from onnxvq.plugins.functions import DOMAIN, PLUGIN_ATTRS

INPUTS = ["A", "B", "a_scale", "b_scale", "a_zero_point", "b_zero_point", "bias"]


def quantized_linear_function(opset: int) -> onnx.FunctionProto:
    nodes = [
        helper.make_node("MatMulInteger", ["A", "B", "a_zero_point", "b_zero_point"], ["acc"]),
        helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["a_scale", "b_scale"], ["scale"]),
        helper.make_node("Mul", ["accf", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["Y"]),
    ]
    return helper.make_function(DOMAIN, "QuantizedLinear", INPUTS, ["Y"], nodes,
                                [helper.make_opsetid("", opset)], attributes=list(PLUGIN_ATTRS))


def _codes_function(name: str, opset: int, tail: list[onnx.NodeProto]) -> onnx.FunctionProto:
    body = list(quantized_linear_function(opset).node)
    body[-1] = helper.make_node("Add", ["scaled", "bias"], ["v"])
    return helper.make_function(DOMAIN, name, [*INPUTS, "y_scale", "y_zero_point"], ["Y"],
                                body + tail, [helper.make_opsetid("", opset)],
                                attributes=list(PLUGIN_ATTRS))


def quantized_linear_quantize_function(opset: int) -> onnx.FunctionProto:
    """QuantizedLinear, then QuantizeLinear(y_scale, y_zero_point) over the last axis (scalars
    or one per column): the two unfused ops."""
    return _codes_function("QuantizedLinearQuantize", opset, [
        helper.make_node("QuantizeLinear", ["v", "y_scale", "y_zero_point"], ["Y"], axis=-1)])


def quantized_linear_gelu_quantize_function(opset: int) -> onnx.FunctionProto:
    """QuantizedLinear, then GeluQuantizeLinear's body (erf GELU, QuantizeLinear)."""
    gelu = fused_functions.gelu_quantize_linear_function(opset)
    tail = [n for n in gelu.node if n.op_type != "Add" or n.input[0] != "X"]
    for n in tail:  # GELU's input X + bias is QuantizedLinear's output v (bias already added)
        n.input[:] = ["v" if i == "s" else i for i in n.input]
    return _codes_function("QuantizedLinearGeluQuantize", opset, tail)


def linear_function_protos(opset: int) -> list[onnx.FunctionProto]:
    return [quantized_linear_function(opset), quantized_linear_quantize_function(opset),
            quantized_linear_gelu_quantize_function(opset)]
