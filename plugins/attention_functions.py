"""ONNX local functions of the fused attention ops (QLinearAttention, LogIntAttention; spec:
plugins/README.md).

The body is the reference (plugins/reference/attention.py) in standard opset-17 ops: the integer
products as int32 MatMuls (ONNX Runtime has int32 MatMul kernels; every sum is below 2^31),
the float steps in the same float32 order as the reference, so the body equals the reference
wherever the reference is exact (all but the softmax's exp and summation order).
LogIntAttention's body calls the com.onnxvq LogIntSoftmax and LogIntMatMul nodes (their own
kernels or functions), so it is exact throughout.
"""

from __future__ import annotations

import onnx
from onnx import AttributeProto, TensorProto, helper

from onnxvq.plugins.functions import DOMAIN, PLUGIN_ATTRS, _Body, _checked, _function

I32, F32 = TensorProto.INT32, TensorProto.FLOAT


def _float_attr(f: _Body, name: str) -> str:
    """float32 scalar holding the node's float attribute `name`."""
    f._count += 1
    out = f"{f._prefix}_{f._count}"
    node = helper.make_node("Constant", [], [out])
    node.attribute.append(
        helper.make_attribute_ref("value_float", AttributeProto.FLOAT, ref_attr_name=name))
    f.nodes.append(node)
    return out


def _split_heads(f: _Body) -> tuple[str, str, str, str]:
    """q - z_q, k - z_k, v - z_v as int32 [B, H, N, D] from X; and the uint8 [3, B, H, N, D]."""
    heads = f.op("Unsqueeze", f.attr("num_heads"), f.const([0], dims=(1,)))
    shape = f.op("Concat", f.const([0, 0, 3], dims=(3,)), heads, f.const([-1], dims=(1,)), axis=0)
    t8 = f.op("Transpose", f.op("Reshape", "X", shape), perm=[2, 0, 3, 1, 4])
    t = f.op("Cast", t8, to=I32)
    zero = {n: f.op("Cast", f.attr(f"{n}_zero_point"), to=I32) for n in "qkv"}
    q, k, v = (f.op("Sub", f.op("Gather", t, f.const(i), axis=0), zero[n])
               for i, n in enumerate("qkv"))
    return q, k, v, t8


def _scores(f: _Body, q: str, k: str) -> str:
    """float32 scores: float(S) * qk_scale, S = (q - z_q)(k - z_k)^T exact in int32."""
    s = f.op("MatMul", q, f.op("Transpose", k, perm=[0, 1, 3, 2]))
    return f.op("Mul", f.op("Cast", s, to=F32), _float_attr(f, "qk_scale"))


def _quantize(f: _Body, x: str, zero_point: str) -> str:
    """sat(rne(x) + zp) in 0..255 as float32 (x already divided by the scale)."""
    zp = f.op("Cast", f.attr(zero_point), to=F32)
    lo, hi = (f.op("Constant", value=helper.make_tensor("v", F32, (), [v])) for v in (0.0, 255.0))
    return f.op("Clip", f.op("Add", f.op("Round", x), zp), lo, hi)


def _output(f: _Body, acc: str) -> str:
    """uint8 [B, N, H * D]: sat(rne((float(acc) * acc_scale) / out_scale) + z_o), heads merged."""
    y = f.op("Mul", f.op("Cast", acc, to=F32), _float_attr(f, "acc_scale"))
    y = f.op("Reshape", f.op("Transpose", y, perm=[0, 2, 1, 3]), f.const([0, 0, -1], dims=(3,)))
    u = f.op("Div", y, _float_attr(f, "out_scale"))
    return f.op("Cast", _quantize(f, u, "out_zero_point"), to=TensorProto.UINT8)


COMMON = ("num_heads", "q_zero_point", "k_zero_point", "v_zero_point", "qk_scale", "acc_scale",
          "out_scale", "out_zero_point")


def qlinear_attention_function(opset: int = 17) -> onnx.FunctionProto:
    """QLinearAttention(X) -> Y; the W8/A8 mode (uniform uint8 probabilities)."""
    f = _Body("qla", _checked(opset))
    q, k, v, _ = _split_heads(f)
    x = _scores(f, q, k)
    e = f.op("Exp", f.op("Sub", x, f.reduce_max_last(x)))
    total = f.op("ReduceSum", e, f.const([-1], dims=(1,)), keepdims=1)
    one = f.op("Constant", value=helper.make_tensor("v", F32, (), [1.0]))
    r = f.op("Div", one, f.op("Mul", total, _float_attr(f, "probs_scale")))
    p = f.op("Cast", _quantize(f, f.op("Mul", e, r), "probs_zero_point"), to=I32)
    p = f.op("Sub", p, f.op("Cast", f.attr("probs_zero_point"), to=I32))
    out = _output(f, f.op("MatMul", p, v))
    return _function("QLinearAttention", f, ["X"], out,
                     (*COMMON, "probs_scale", "probs_zero_point"))


def _with_refs(f: _Body, op: str, inputs: list[str], refs: tuple[str, ...]) -> str:
    """A com.onnxvq node whose int attributes are the function node's own (attribute refs)."""
    out = f.op(op, *inputs)
    node = f.nodes[-1]
    node.domain = DOMAIN
    for name in refs:
        node.attribute.append(helper.make_attribute_ref(name, AttributeProto.INT))
    return out


LIS_ATTRS = ("x0", "b", "c", "n", "bits", "octave_steps")


def log_int_attention_function(opset: int = 17) -> onnx.FunctionProto:
    """LogIntAttention(X) -> Y; the --lis mode: int8 scores, LogIntSoftmax, LogIntMatMul."""
    f = _Body("lia", _checked(opset))
    q, k, _, t8 = _split_heads(f)
    x = f.op("Div", _scores(f, q, k), _float_attr(f, "scores_scale"))
    lo, hi = (f.op("Constant", value=helper.make_tensor("v", F32, (), [v])) for v in (-128., 127.))
    xq = f.op("Cast", f.op("Clip", f.op("Round", x), lo, hi), to=TensorProto.INT8)
    codes = _with_refs(f, "LogIntSoftmax", [xq], LIS_ATTRS)
    v8 = f.op("Gather", t8, f.const(2), axis=0)
    acc = _with_refs(f, "LogIntMatMul", [codes, v8], ("bits", "octave_steps"))
    ref = helper.make_attribute_ref("zero_point", AttributeProto.INT, ref_attr_name="v_zero_point")
    f.nodes[-1].attribute.append(ref)
    f.nodes.append(helper.make_node("Identity", [_output(f, acc)], ["Y"]))
    return helper.make_function(
        DOMAIN, "LogIntAttention", ["X"], ["Y"], f.nodes,
        [helper.make_opsetid("", f.opset), helper.make_opsetid(DOMAIN, 1)],
        attributes=[*COMMON, "scores_scale", *LIS_ATTRS, *PLUGIN_ATTRS])


def attention_function_protos(opset: int = 17) -> list[onnx.FunctionProto]:
    return [qlinear_attention_function(opset), log_int_attention_function(opset)]
