"""ONNX local function of QuantizedLinear (domain com.onnxvq): the int8 Linear in standard ops.

    acc = MatMulInteger(A, B, a_zero_point, b_zero_point)        int32, exact
    Y   = Cast(acc, FLOAT) * (a_scale * b_scale) + bias            float32, one rounding a step

so a model carrying the op runs in any ONNX Runtime: without onnxvq's native library ORT inlines
the body (slower than MatMulIntegerToFloat, but with the same outputs bit for bit).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

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


def linear_function_protos(opset: int) -> list[onnx.FunctionProto]:
    return [quantized_linear_function(opset)]
