"""ONNX local functions of QuantizedLinear and its fused forms (domain com.onnxvq).

QuantizedLinear's body is the op it is defined to equal bit for bit, ONNX Runtime's
`com.microsoft.MatMulIntegerToFloat` (plugins/README.md): a model carrying the op runs in any
ONNX Runtime, and without onnxvq's native library at MLAS's int8 speed. (The standard-op body
MatMulInteger, Cast, Mul, Add gives the same bits, but ORT does not fuse it back after inlining:
three float passes over every Linear's output made a W8/A8 DeiT model without the library slower
than FP32 at batch 8.) These ops are written only by the ORT lowering, so the body may use ORT's
contrib domain.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from onnxvq.plugins import fused_functions
from onnxvq.plugins.functions import DOMAIN, PLUGIN_ATTRS

INPUTS = ["A", "B", "a_scale", "b_scale", "a_zero_point", "b_zero_point", "bias"]


MS_DOMAIN = "com.microsoft"


def _linear(out: str) -> list[onnx.NodeProto]:
    """MatMulIntegerToFloat, then a CastLike to a_scale's type: a no-op that ORT drops, there so
    that onnx's shape inference (which has no com.microsoft schemas) knows the output's type."""
    return [helper.make_node("MatMulIntegerToFloat", INPUTS, [f"{out}_ms"], domain=MS_DOMAIN),
            helper.make_node("CastLike", [f"{out}_ms", "a_scale"], [out])]


def _imports(opset: int) -> list[onnx.OperatorSetIdProto]:
    return [helper.make_opsetid("", opset), helper.make_opsetid(MS_DOMAIN, 1)]


def quantized_linear_function(opset: int) -> onnx.FunctionProto:
    return helper.make_function(DOMAIN, "QuantizedLinear", INPUTS, ["Y"], _linear("Y"),
                                _imports(opset), attributes=list(PLUGIN_ATTRS))


def _codes_function(name: str, opset: int, tail: list[onnx.NodeProto]) -> onnx.FunctionProto:
    """QuantizedLinear's output `v`, then `tail` from `v` to `Y`."""
    return helper.make_function(DOMAIN, name, [*INPUTS, "y_scale", "y_zero_point"], ["Y"],
                                [*_linear("v"), *tail], _imports(opset),
                                attributes=list(PLUGIN_ATTRS))


def quantized_linear_quantize_function(opset: int) -> onnx.FunctionProto:
    """QuantizedLinear, then QuantizeLinear(y_scale, y_zero_point) over the last axis (scalars
    or one per column): the two unfused ops, the quantizer spelt out as sat(rne(v / y_scale) +
    zp). ONNX Runtime's per-axis QuantizeLinear runs one scalar call per element (10 ms for a
    DeiT-S QKV tensor at batch 1, ~100x its per-tensor speed); Div, Round and Add broadcast at
    full speed, and the saturating cast of integer values is a per-tensor QuantizeLinear with
    scale 1 and a zero point of y_zero_point's type (uint8 or int8)."""
    f32 = TensorProto.FLOAT
    return _codes_function("QuantizedLinearQuantize", opset, [
        helper.make_node("Div", ["v", "y_scale"], ["u"]),
        helper.make_node("Round", ["u"], ["r"]),
        helper.make_node("Cast", ["y_zero_point"], ["zf"], to=f32),
        helper.make_node("Add", ["r", "zf"], ["t"]),
        helper.make_node("Constant", [], ["one"], value=helper.make_tensor("1", f32, (), [1.0])),
        helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("0", f32, (), [0.0])),
        helper.make_node("CastLike", ["zero", "y_zero_point"], ["z0"]),
        helper.make_node("QuantizeLinear", ["t", "one", "z0"], ["Y"])])


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
