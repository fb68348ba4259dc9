"""ONNX local functions of the fused attention ops (QLinearAttention, LogIntAttention; spec:
plugins/README.md).

The body is the reference (plugins/reference/attention.py) in standard opset-17 ops, written for
ONNX Runtime's speed (a model run without the native library inlines it): the integer products
as MatMulInteger on the uint8 codes with their zero points (exact int32 on MLAS's int8 GEMM; an
int32 MatMul is a naive loop there, and with it a W8/A8 model without the library was 1.6x slower
than FP32), every requantization as one QuantizeLinear (IEEE division, round half to even,
saturation: the reference's steps), and QLinearAttention's softmax as ORT's Softmax followed by
the probabilities' QuantizeLinear, the unfused graph the op replaced. So the body equals the
reference wherever the reference is exact (all but the softmax's exp and summation order).
LogIntAttention's body calls the com.onnxvq LogIntSoftmax and LogIntMatMul nodes (their own
kernels or functions), so it is exact throughout.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from onnxvq.plugins.functions import DOMAIN, PLUGIN_ATTRS, _Body, _checked, _function

F32, U8 = TensorProto.FLOAT, TensorProto.UINT8


def _float_attr(f: _Body, name: str) -> str:
    """float32 scalar holding the node's float attribute `name`."""
    f._count += 1
    out = f"{f._prefix}_{f._count}"
    node = helper.make_node("Constant", [], [out])
    node.attribute.append(
        helper.make_attribute_ref("value_float", AttributeProto.FLOAT, ref_attr_name=name))
    f.nodes.append(node)
    return out


def _packed_order(f: _Body) -> str:
    """X as [B, N, 3·H, D] in the packed order t·H + h whatever `qkv_layout` (0: already; 1: X
    is [B, N, H, 3·D], piece (h, t) at h·3 + t): one Gather of index (1 - L)(t·H + h) + L(h·3 + t),
    L the attribute (a function body cannot branch on an attribute without an If)."""
    n_heads, layout = f.attr("num_heads"), f.attr("qkv_layout")
    t = f.op("Unsqueeze", f.op("Range", f.const(0), f.const(3), f.const(1)),
             f.const([1], dims=(1,)))
    h = f.op("Unsqueeze", f.op("Range", f.const(0), n_heads, f.const(1)),
             f.const([0], dims=(1,)))
    packed = f.op("Add", f.op("Mul", t, n_heads), h)
    per_head = f.op("Add", f.op("Mul", h, f.const(3)), t)
    idx = f.op("Add", f.op("Mul", packed, f.op("Sub", f.const(1), layout)),
               f.op("Mul", per_head, layout))
    width = f.op("Unsqueeze", f.op("Mul", n_heads, f.const(3)), f.const([0], dims=(1,)))
    shape = f.op("Concat", f.const([0, 0], dims=(2,)), width, f.const([-1], dims=(1,)), axis=0)
    return f.op("Gather", f.op("Reshape", "X", shape), f.op("Reshape", idx, f.const(
        [-1], dims=(1,))), axis=2)


def _split_heads(f: _Body, layouts: bool = False) -> tuple[str, str, str]:
    """q, k, v as uint8 [B, H, N, D] from X (uint8 [B, N, 3 * H * D]); `layouts`: the op has the
    `qkv_layout` attribute (QLinearAttention), X possibly [B, N, H, 3 * D]."""
    heads = f.op("Unsqueeze", f.attr("num_heads"), f.const([0], dims=(1,)))
    shape = f.op("Concat", f.const([0, 0, 3], dims=(3,)), heads, f.const([-1], dims=(1,)), axis=0)
    x = _packed_order(f) if layouts else "X"
    t8 = f.op("Transpose", f.op("Reshape", x, shape), perm=[2, 0, 3, 1, 4])
    q, k, v = (f.op("Gather", t8, f.const(i), axis=0) for i in range(3))
    return q, k, v


def _zero_point(f: _Body, name: str) -> str:
    """uint8 scalar holding the node's int attribute `name` (a MatMulInteger zero point)."""
    return f.op("Cast", f.attr(name), to=U8)


def _scores(f: _Body, q: str, k: str) -> str:
    """float32 scores: float(S) * qk_scale, S = (q - z_q)(k - z_k)^T exact in int32."""
    s = f.op("MatMulInteger", q, f.op("Transpose", k, perm=[0, 1, 3, 2]),
             _zero_point(f, "q_zero_point"), _zero_point(f, "k_zero_point"))
    return f.op("Mul", f.op("Cast", s, to=F32), _float_attr(f, "qk_scale"))


def _add_bias(f: _Body, x: str) -> str:
    """x + bias[b mod W] for the node's `bias` attribute [W, 1|H, N, N]: x viewed as
    [B / W, W, H, N, N] and back. A node without the attribute gets its default zeros
    [1, 1, 1, 1], and x + 0 = x (a model whose other attentions carry a bias)."""
    f._count += 1
    bias = f"{f._prefix}_{f._count}"
    node = helper.make_node("Constant", [], [bias])
    node.attribute.append(helper.make_attribute_ref("value", AttributeProto.TENSOR,
                                                    ref_attr_name="bias"))
    f.nodes.append(node)
    shape = f.op("Shape", x)
    windows = f.op("Shape", bias, start=0, end=1)
    view = f.op("Concat", f.const([-1], dims=(1,)), windows, f.op("Shape", x, start=1), axis=0)
    return f.op("Reshape", f.op("Add", f.op("Reshape", x, view), bias), shape)


def _quantize(f: _Body, x: str, scale: str, zero_point: str) -> str:
    """uint8 sat(rne(x / scale) + zp), zp the node's int attribute `zero_point`, as one
    QuantizeLinear: IEEE division, round half to even and saturation are the reference's steps
    (ORT's Round op alone costs more than the whole QuantizeLinear)."""
    return f.op("QuantizeLinear", x, scale, _zero_point(f, zero_point))


def _output(f: _Body, acc: str) -> str:
    """uint8 [B, N, H * D]: sat(rne((float(acc) * acc_scale) / out_scale) + z_o), heads merged."""
    y = f.op("Mul", f.op("Cast", acc, to=F32), _float_attr(f, "acc_scale"))
    y = f.op("Reshape", f.op("Transpose", y, perm=[0, 2, 1, 3]), f.const([0, 0, -1], dims=(3,)))
    return _quantize(f, y, _float_attr(f, "out_scale"), "out_zero_point")


COMMON = ("num_heads", "q_zero_point", "k_zero_point", "v_zero_point", "qk_scale", "acc_scale",
          "out_scale", "out_zero_point")


def qlinear_attention_function(opset: int = 17, bias: bool = False) -> onnx.FunctionProto:
    """QLinearAttention(X) -> Y; the W8/A8 mode (uniform uint8 probabilities). `bias`: the body
    adds the optional tensor attribute `bias` to the float scores (a model with a biased node
    gets this one, `ops.register_functions`); without, the body has no bias ops at all (the
    zero bias cost two Reshapes and an Add over the scores in every attention)."""
    f = _Body("qla", _checked(opset))
    q, k, v = _split_heads(f, layouts=True)
    x = _scores(f, q, k)
    x = _add_bias(f, x) if bias else x
    # The softmax as the unfused graph had it (ORT's Softmax, then the probabilities'
    # QuantizeLinear): within the stated rounding of the kernel's own softmax, at ORT's speed.
    p = _quantize(f, f.op("Softmax", x, axis=-1), _float_attr(f, "probs_scale"),
                  "probs_zero_point")
    out = _output(f, f.op("MatMulInteger", p, v, _zero_point(f, "probs_zero_point"),
                          _zero_point(f, "v_zero_point")))
    fn = _function("QLinearAttention", f, ["X"], out, (*COMMON, "probs_scale", "probs_zero_point"))
    if bias:
        no_bias = numpy_helper.from_array(np.zeros((1, 1, 1, 1), np.float32))
        fn.attribute_proto.append(helper.make_attribute("bias", no_bias))  # optional: zeros
    fn.attribute_proto.append(helper.make_attribute("qkv_layout", 0))  # optional: packed
    return fn


def _with_refs(f: _Body, op: str, inputs: list[str], refs: tuple[str, ...]) -> str:
    """A com.onnxvq node whose int attributes are the function node's own (attribute refs)."""
    out = f.op(op, *inputs)
    node = f.nodes[-1]
    node.domain = DOMAIN
    for name in refs:
        node.attribute.append(helper.make_attribute_ref(name, AttributeProto.INT))
    return out


LIS_ATTRS = ("x0", "b", "c", "n", "bits", "octave_steps")


def log_int_attention_function(opset: int = 17, bias: bool = False) -> onnx.FunctionProto:
    """LogIntAttention(X) -> Y; the --lis mode: int8 scores, LogIntSoftmax, LogIntMatMul.
    `bias`: the body adds the optional tensor attribute `bias` to the float scores before their
    int8 codes, as QLinearAttention's biased body does."""
    f = _Body("lia", _checked(opset))
    q, k, v8 = _split_heads(f)
    x = _scores(f, q, k)
    x = _add_bias(f, x) if bias else x
    xq = f.op("QuantizeLinear", x, _float_attr(f, "scores_scale"),
              f.const(0, dtype=TensorProto.INT8))  # int8 scores, sat(rne(x / scores_scale))
    codes = _with_refs(f, "LogIntSoftmax", [xq], LIS_ATTRS)
    acc = _with_refs(f, "LogIntMatMul", [codes, v8], ("bits", "octave_steps"))
    ref = helper.make_attribute_ref("zero_point", AttributeProto.INT, ref_attr_name="v_zero_point")
    f.nodes[-1].attribute.append(ref)
    f.nodes.append(helper.make_node("Identity", [_output(f, acc)], ["Y"]))
    fn = helper.make_function(
        DOMAIN, "LogIntAttention", ["X"], ["Y"], f.nodes,
        [helper.make_opsetid("", f.opset), helper.make_opsetid(DOMAIN, 1)],
        attributes=[*COMMON, "scores_scale", *LIS_ATTRS, *PLUGIN_ATTRS])
    if bias:
        no_bias = numpy_helper.from_array(np.zeros((1, 1, 1, 1), np.float32))
        fn.attribute_proto.append(helper.make_attribute("bias", no_bias))  # optional: zeros
    return fn


def attention_function_protos(opset: int = 17, bias: bool = False) -> list[onnx.FunctionProto]:
    """Both fused attention bodies; `bias`: each adds its `bias` attribute."""
    return [qlinear_attention_function(opset, bias), log_int_attention_function(opset, bias)]
