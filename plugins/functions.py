"""ONNX model-local functions for IntLayerNorm, LogIntSoftmax and LogIntMatMul (domain com.onnxvq).

Each function body is the op's reference algorithm (plugins/README.md) written with standard
opset-17 ops, bit-exact with plugins/reference. ONNX Runtime inlines a local function whenever no
kernel is registered for the node, so a quantized model runs in any ORT; with onnxvq's native
library loaded, the kernel wins. The bodies read the node's attributes through attribute references
(`Constant(value_int=@attr)`, `Cast(to=@output_dtype)`), so one FunctionProto serves every node.

ORT CPU kernel types shape the bodies: all arithmetic is int64 (Add/Sub/Mul/Div/Neg/Abs/Min/Max,
ReduceSum/ReduceMax, MatMul, Where and the comparisons all have int64 kernels), while BitShift only
exists for unsigned types, so shifts and powers of two go through uint64 on non-negative values.
ONNX integer Div truncates toward zero, so it is only applied to non-negative operands (then it is
floor division); signed rounding takes the magnitude first (`_rnd_shift`).
"""

from __future__ import annotations

import onnx
from onnx import AttributeProto, TensorProto, helper

from onnxvq.plugins.reference.softmax import SQRT2_NUM, SQRT2_SHIFT, SUM_BITS

DOMAIN = "com.onnxvq"
OPSET = 17  # the lowest opset the bodies are written for (LayerNormalization's, after fusing)
MAX_OPSET = 21
PLUGIN_ATTRS = ("plugin_version", "plugin_namespace")
I64, U64 = TensorProto.INT64, TensorProto.UINT64


class _Body:
    """Collects the nodes of one function body; every op returns its (fresh) output name."""

    def __init__(self, prefix: str, opset: int = OPSET) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self._prefix = prefix
        self._count = 0
        self.opset = opset

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        self._count += 1
        out = f"{self._prefix}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def const(self, value: int, dtype: int = I64, dims: tuple[int, ...] = ()) -> str:
        vals = [value] if not dims else list(value)  # type: ignore[arg-type]
        return self.op("Constant", value=helper.make_tensor("v", dtype, dims, vals))

    def attr(self, name: str) -> str:
        """int64 scalar holding the node attribute `name`."""
        self._count += 1
        out = f"{self._prefix}_{self._count}"
        node = helper.make_node("Constant", [], [out])
        node.attribute.append(
            helper.make_attribute_ref("value_int", AttributeProto.INT, ref_attr_name=name)
        )
        self.nodes.append(node)
        return out

    def i64(self, x: str) -> str:
        return self.op("Cast", x, to=I64)

    def u64(self, x: str) -> str:
        return self.op("Cast", x, to=U64)

    def pow2(self, s: str) -> str:
        """2^s as int64 for an int64 tensor 0 <= s <= 62."""
        return self.i64(self.op("BitShift", self.const(1, U64), self.u64(s), direction="LEFT"))

    def shr(self, x: str, s: str) -> str:
        """x >> s for non-negative int64 x and 0 <= s <= 63 (logical shift through uint64)."""
        return self.i64(self.op("BitShift", self.u64(x), self.u64(s), direction="RIGHT"))

    def reduce_max_last(self, x: str) -> str:
        """ReduceMax over the last axis, keepdims: axes is an attribute before opset 18, then an
        input (the body must match the opset it is stamped with)."""
        if self.opset < 18:
            return self.op("ReduceMax", x, axes=[-1], keepdims=1)
        return self.op("ReduceMax", x, self.const([-1], dims=(1,)), keepdims=1)

    def where_neg(self, a: str, mag: str) -> str:
        """sign(a) * mag."""
        return self.op("Where", self.op("Less", a, self.const(0)), self.op("Neg", mag), mag)


def _rnd_shift(f: _Body, a: str, s: str) -> str:
    """a / 2^s rounded half away from zero, s >= 1 an int64 scalar (reference.rnd_shift)."""
    half = f.pow2(f.op("Sub", s, f.const(1)))
    mag = f.op("Div", f.op("Add", f.op("Abs", a), half), f.pow2(s))
    return f.where_neg(a, mag)


def _bit_length(f: _Body, v: str) -> str:
    """reference.bit_length: 6-step binary search on a non-negative int64 tensor."""
    n, x = f.op("Mul", v, f.const(0)), v
    for s in (32, 16, 8, 4, 2, 1):
        t = f.shr(x, f.const(s))
        big = f.op("Greater", t, f.const(0))
        n = f.op("Where", big, f.op("Add", n, f.const(s)), n)
        x = f.op("Where", big, t, x)
    return f.op("Add", n, f.i64(f.op("Greater", x, f.const(0))))


def _isqrt(f: _Body, v: str) -> str:
    """reference.isqrt: x = 2^ceil(L/2), then 6 steps of x = min(x, (x + v // x) // 2)."""
    half_len = f.op("Div", f.op("Add", _bit_length(f, v), f.const(1)), f.const(2))
    x = f.pow2(half_len)
    for _ in range(6):
        quot = f.op("Div", v, f.op("Max", x, f.const(1)))
        x = f.op("Min", x, f.op("Div", f.op("Add", x, quot), f.const(2)))
    return x


def _function(name: str, f: _Body, inputs: list[str], output: str, attrs: tuple[str, ...]):
    f.nodes.append(helper.make_node("Identity", [output], ["Y"]))
    return helper.make_function(
        DOMAIN,
        name,
        inputs,
        ["Y"],
        f.nodes,
        [helper.make_opsetid("", f.opset)],
        attributes=list(attrs + PLUGIN_ATTRS),
    )


def int_layer_norm_function(opset: int = OPSET) -> onnx.FunctionProto:
    """IntLayerNorm(X, alpha, gamma, beta) -> Y; README steps 1-10."""
    f = _Body("iln", _checked(opset))
    axes = f.const([-1], dims=(1,))
    xt = f.op("Mul", f.op("Sub", f.i64("X"), f.attr("zero_point")), f.pow2(f.i64("alpha")))
    s1 = f.op("ReduceSum", xt, axes, keepdims=1)
    s2 = f.op("ReduceSum", f.op("Mul", xt, xt), axes, keepdims=1)
    c = f.op("Shape", "X", start=-1)
    d = f.op("Sub", f.op("Mul", c, s2), f.op("Mul", s1, s1))
    eps = f.op("Mul", f.op("Mul", c, c), f.attr("epsilon"))
    sig = _isqrt(f, f.op("Add", f.op("Mul", d, f.const(1 << 12)), eps))
    r = f.op("Div", f.const(1 << 54), f.op("Max", sig, f.const(1)))
    num = f.op("Sub", f.op("Mul", c, xt), s1)
    z = _rnd_shift(f, f.op("Mul", num, r), f.const(54 - 6 - 16))
    a = f.op("Add", f.op("Mul", z, f.i64("gamma")), "beta")
    y = _rnd_shift(f, a, f.op("Add", f.attr("gamma_shift"), f.const(16)))
    is_int8 = f.i64(f.op("Equal", f.attr("output_dtype"), f.const(TensorProto.INT8)))
    lo = f.op("Mul", is_int8, f.const(-128))
    hi = f.op("Sub", f.const(255), f.op("Mul", is_int8, f.const(128)))
    y = f.op("Min", f.op("Max", y, lo), hi)
    out = f.op("Cast", y)
    f.nodes[-1].attribute.append(
        helper.make_attribute_ref("to", AttributeProto.INT, ref_attr_name="output_dtype")
    )
    attrs = ("zero_point", "epsilon", "gamma_shift", "output_dtype")
    return _function("IntLayerNorm", f, ["X", "alpha", "gamma", "beta"], out, attrs)


def _code_limits(f: _Body) -> tuple[str, str]:
    """(M, Z) = (min(2^bits - 1, 31), min(2^bits, 255)) from the `bits` attribute."""
    levels = f.pow2(f.attr("bits"))
    m = f.op("Min", f.op("Sub", levels, f.const(1)), f.const(31))
    return m, f.op("Min", levels, f.const(255))


def _octave_steps(f: _Body) -> tuple[str, str]:
    """(steps, steps == 2 as bool) from the `octave_steps` attribute (1: log2, 2: log-sqrt(2))."""
    steps = f.attr("octave_steps")
    return steps, f.op("Equal", steps, f.const(2))


def log_int_softmax_function(opset: int = OPSET) -> onnx.FunctionProto:
    """LogIntSoftmax(X) -> Y uint8 log codes; README steps 1-7 (and "Base sqrt(2)")."""
    f = _Body("lis", _checked(opset))
    x = f.i64("X")
    d = f.op("Sub", x, f.reduce_max_last(x))
    x0 = f.attr("x0")
    q = f.op("Div", f.op("Neg", d), f.op("Neg", x0))
    r = f.op("Sub", d, f.op("Mul", q, x0))
    rb = f.op("Add", r, f.attr("b"))
    p = f.op("Add", f.op("Mul", rb, rb), f.attr("c"))
    e = f.shr(f.op("Mul", p, f.pow2(f.attr("n"))), f.op("Min", q, f.const(63)))
    s = f.op("ReduceSum", e, f.const([-1], dims=(1,)), keepdims=1)
    steps, sqrt2 = _octave_steps(f)
    sum_bits = f.op("Sub", f.op("Div", f.const(SUM_BITS + 1), steps), f.const(1))  # 31 or 15
    h = f.op("Max", f.op("Sub", _bit_length(f, s), sum_bits), f.const(0))
    big, small = f.shr(s, h), f.shr(e, h)
    big_p, small_p = f.op("Mul", big, big), f.op("Mul", small, small)
    one = f.const(1)  # log-sqrt(2) compares fourth powers (< 2^60 with S' < 2^15)
    big_p = f.op("Mul", big_p, f.op("Where", sqrt2, big_p, one))
    small_p = f.op("Mul", small_p, f.op("Where", sqrt2, small_p, one))
    m, z = _code_limits(f)
    cap = f.op("Add", m, f.const(1))
    k = f.op("Mul", small, f.const(0))
    for step in (32, 16, 8, 4, 2, 1):  # binary search of reference._rounded_log2_ratio
        t = f.op("Add", k, f.const(step))
        shift = f.op("Min", f.op("Sub", f.op("Mul", t, f.const(2)), f.const(1)), f.const(63))
        above = f.op("GreaterOrEqual", f.shr(big_p, shift), small_p)
        k = f.op("Where", f.op("And", f.op("LessOrEqual", t, cap), above), t, k)
    zero = f.op("Or", f.op("Equal", small, f.const(0)), f.op("Greater", k, m))
    out = f.op("Cast", f.op("Where", zero, z, k), to=TensorProto.UINT8)
    attrs = ("x0", "b", "c", "n", "bits", "octave_steps")
    return _function("LogIntSoftmax", f, ["X"], out, attrs)


def log_int_matmul_function(opset: int = OPSET) -> onnx.FunctionProto:
    """LogIntMatMul(A, V) -> Y int64 = sum_k w(A) * (V - zero_point), w as in
    reference.code_weights: mult(a) * 2^(ceil(M/s) - ceil(a/s)) for s = octave_steps, with
    mult = 1 (s = 1) or 128 / 181 for even / odd codes (s = 2)."""
    f = _Body("lim", _checked(opset))
    a = f.i64("A")
    m, _ = _code_limits(f)
    steps, sqrt2 = _octave_steps(f)
    below = f.op("Sub", steps, f.const(1))  # ceil(v / s) = (v + s - 1) // s, v >= 0
    top = f.op("Div", f.op("Add", m, below), steps)
    half = f.op("Div", f.op("Add", a, below), steps)
    odd = f.op("Greater", f.op("Sub", f.op("Mul", half, steps), a), f.const(0))
    even_mult = f.op("Where", sqrt2, f.const(1 << SQRT2_SHIFT), f.const(1))
    mult = f.op("Where", odd, f.const(SQRT2_NUM), even_mult)
    w = f.op("Mul", mult, f.pow2(f.op("Max", f.op("Sub", top, half), f.const(0))))
    w = f.op("Where", f.op("LessOrEqual", a, m), w, f.const(0))
    v = f.op("Sub", f.i64("V"), f.attr("zero_point"))
    out = f.op("MatMul", w, v)
    return _function("LogIntMatMul", f, ["A", "V"], out, ("bits", "zero_point", "octave_steps"))


def function_protos(opset: int = OPSET) -> list[onnx.FunctionProto]:
    """The three local functions, to append to `model.functions` (see ops.add_functions).

    ONNX Runtime refuses a local function whose default-domain import differs from the model's
    ("FunctionOp imports version 17 whereas model imports version 20"), so the bodies are stamped
    with the opset of the model they go into."""
    return [int_layer_norm_function(opset), log_int_softmax_function(opset),
            log_int_matmul_function(opset)]


def _checked(opset: int) -> int:
    # Below 17 the model is raised to 17 by fuse-layernorm; the bodies use Shape(start=), opset 15.
    if not OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"com.onnxvq functions are written for opsets {OPSET}-{MAX_OPSET}, "
                         f"not {opset}")
    return opset
