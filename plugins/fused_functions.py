"""ONNX local functions of the fused float-to-code ops (GeluQuantizeLinear, AddLayerNormQuantize,
AddMulQuantizeLinear), domain com.onnxvq.

Each body is the unfused standard-op graph the op replaces (the float kernel, then one
QuantizeLinear), so a model carrying the op runs in any ONNX Runtime: without onnxvq's native
library ORT inlines the body and computes exactly what the unfused quantized graph did.
"""

from __future__ import annotations

import math

import onnx
from onnx import AttributeProto, TensorProto, helper

from onnxvq.plugins.functions import DOMAIN, PLUGIN_ATTRS


def _const(name: str, value: float) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name],
                            value=helper.make_tensor(name, TensorProto.FLOAT, (), [value]))


def gelu_quantize_linear_function(opset: int) -> onnx.FunctionProto:
    """GeluQuantizeLinear(X, bias, y_scale, y_zero_point) -> Y =
    QuantizeLinear(0.5 s (1 + erf(s / sqrt 2)), y_scale, y_zero_point) with s = X + bias."""
    nodes = [
        helper.make_node("Add", ["X", "bias"], ["s"]),
        _const("sqrt2", math.sqrt(2.0)), _const("one", 1.0), _const("half", 0.5),
        helper.make_node("Div", ["s", "sqrt2"], ["u"]),
        helper.make_node("Erf", ["u"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["s", "e1"], ["g2"]),
        helper.make_node("Mul", ["g2", "half"], ["g"]),
        helper.make_node("QuantizeLinear", ["g", "y_scale", "y_zero_point"], ["Y"]),
    ]
    return helper.make_function(DOMAIN, "GeluQuantizeLinear", ["X", "bias", "y_scale",
                                "y_zero_point"], ["Y"], nodes, [helper.make_opsetid("", opset)],
                                attributes=list(PLUGIN_ATTRS))


def add_layer_norm_quantize_function(opset: int) -> onnx.FunctionProto:
    """AddLayerNormQuantize(A, B, gamma, beta, y_scale, y_zero_point) -> (Y, S): S = Add(A, B),
    Y = QuantizeLinear(LayerNormalization(S, gamma, beta, epsilon=@epsilon), y_scale, zp)."""
    ln = helper.make_node("LayerNormalization", ["S", "gamma", "beta"], ["n"], axis=-1)
    ln.attribute.append(helper.make_attribute_ref("epsilon", AttributeProto.FLOAT))
    nodes = [helper.make_node("Add", ["A", "B"], ["S"]), ln,
             helper.make_node("QuantizeLinear", ["n", "y_scale", "y_zero_point"], ["Y"])]
    return helper.make_function(DOMAIN, "AddLayerNormQuantize", ["A", "B", "gamma", "beta",
                                "y_scale", "y_zero_point"], ["Y", "S"], nodes,
                                [helper.make_opsetid("", opset)],
                                attributes=["epsilon", *PLUGIN_ATTRS])


def add_mul_quantize_linear_function(opset: int) -> onnx.FunctionProto:
    """AddMulQuantizeLinear(A, B, M, y_scale, y_zero_point) -> (Y, S): S = Add(A, B),
    Y = QuantizeLinear(Mul(S, M), y_scale, y_zero_point)."""
    nodes = [helper.make_node("Add", ["A", "B"], ["S"]), helper.make_node("Mul", ["S", "M"], ["t"]),
             helper.make_node("QuantizeLinear", ["t", "y_scale", "y_zero_point"], ["Y"])]
    return helper.make_function(DOMAIN, "AddMulQuantizeLinear", ["A", "B", "M", "y_scale",
                                "y_zero_point"], ["Y", "S"], nodes,
                                [helper.make_opsetid("", opset)], attributes=list(PLUGIN_ATTRS))


def add_int_layer_norm_function(opset: int) -> onnx.FunctionProto:
    """AddIntLayerNorm(A, B, M, x_scale, x_zero_point, alpha, gamma, beta) -> (Y, S):
    (X, S) = AddMulQuantizeLinear(A, B, M, x_scale, x_zero_point), Y = IntLayerNorm(X, alpha,
    gamma, beta) with the node's attributes: the two ops it fuses, themselves local functions."""
    iln = helper.make_node("IntLayerNorm", ["X", "alpha", "gamma", "beta"], ["Y"], domain=DOMAIN)
    amq = helper.make_node("AddMulQuantizeLinear", ["A", "B", "M", "x_scale", "x_zero_point"],
                           ["X", "S"], domain=DOMAIN)
    attrs = ("zero_point", "epsilon", "gamma_shift", "output_dtype")
    iln.attribute.extend(helper.make_attribute_ref(n, AttributeProto.INT) for n in attrs)
    return helper.make_function(DOMAIN, "AddIntLayerNorm", ["A", "B", "M", "x_scale",
                                "x_zero_point", "alpha", "gamma", "beta"], ["Y", "S"], [amq, iln],
                                [helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, 1)],
                                attributes=[*attrs, *PLUGIN_ATTRS])


def fused_function_protos(opset: int) -> list[onnx.FunctionProto]:
    return [gelu_quantize_linear_function(opset), add_layer_norm_quantize_function(opset),
            add_mul_quantize_linear_function(opset), add_int_layer_norm_function(opset)]
