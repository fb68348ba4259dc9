"""``tensorrt.plugin`` registrations of IntLayerNorm, LogIntSoftmax and LogIntMatMul.

Importing this module registers the three plugins (namespace ``com.onnxvq``, version "1"); it
needs the ``tensorrt`` package. Each plugin has a shape/type descriptor (``@trtp.register``) and an
ahead-of-time implementation (``@trtp.aot_impl``) that compiles the Triton kernel for the engine's
GPU and returns PTX, launch geometry and the int32 scalars: TensorRT embeds the PTX in the engine,
so no Python runs at inference.

The registered attributes are the nodes' attributes (plugins/README.md); TensorRT's ONNX parser
fills them from the node and skips the node attributes no plugin declares (``plugin_version``,
``plugin_namespace``). Plugin attributes cannot have defaults, so nodes must spell out every one.

No ``from __future__ import annotations`` here: tensorrt.plugin inspects real annotations.
"""


import tensorrt as trt
import tensorrt.plugin as trtp
from onnx import TensorProto

from onnxvq.plugins.trt import launch
from onnxvq.plugins.trt.aot import CompiledKernel, compile_kernel
from onnxvq.plugins.trt.names import NAMESPACE

_TRITON_TYPES = {trt.uint8: "u8", trt.int8: "i8", trt.int32: "i32", trt.int64: "i64"}
_OUTPUT_TYPES = {TensorProto.UINT8: trt.uint8, TensorProto.INT8: trt.int8}
_AotResult = tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]


def _triton_type(desc: trtp.TensorDesc, what: str) -> str:
    if desc.dtype not in _TRITON_TYPES:
        raise ValueError(f"{what}: unsupported tensor type {desc.dtype}")
    return _TRITON_TYPES[desc.dtype]


def _result(kernel: CompiledKernel, grid, *scalars) -> _AotResult:
    params = trtp.KernelLaunchParams()
    params.grid_x = grid
    params.block_x = kernel.block_x
    params.shared_mem = kernel.shared_mem
    extra = trtp.SymIntExprs(len(scalars))
    for i, value in enumerate(scalars):
        extra[i] = trtp.SymInt32(value)
    return kernel.name, kernel.ptx, params, extra


def _last_dim(desc: trtp.TensorDesc):
    return desc.shape_expr[desc.ndim - 1]


@trtp.register(f"{NAMESPACE}::IntLayerNorm")
def int_layer_norm_desc(
    x: trtp.TensorDesc, alpha: trtp.TensorDesc, gamma: trtp.TensorDesc, beta: trtp.TensorDesc,
    zero_point: int, epsilon: int, gamma_shift: int, output_dtype: int,
) -> trtp.TensorDesc:
    return trtp.from_shape_expr(x.shape_expr, _OUTPUT_TYPES[output_dtype])


@trtp.aot_impl(f"{NAMESPACE}::IntLayerNorm")
def int_layer_norm_aot(
    x: trtp.TensorDesc, alpha: trtp.TensorDesc, gamma: trtp.TensorDesc, beta: trtp.TensorDesc,
    zero_point: int, epsilon: int, gamma_shift: int, output_dtype: int,
    outputs: tuple[trtp.TensorDesc], tactic: int,
) -> _AotResult:
    channels = _last_dim(x)
    if not channels.is_constant:
        raise ValueError("IntLayerNorm needs a build-time constant channel count")
    c = channels.constant_value()
    block = launch.next_pow2(c)
    consts = launch.layer_norm_constexprs(
        c, zero_point=zero_point, epsilon=epsilon, gamma_shift=gamma_shift,
        output_dtype=output_dtype, rows=launch.default_rows(block),
    )
    dtypes = {"x": _triton_type(x, "IntLayerNorm X"), "y": _triton_type(outputs[0], "Y")}
    kernel = compile_kernel("IntLayerNorm", dtypes, consts)
    n_rows = x.shape_expr.numel() // c
    return _result(kernel, trtp.cdiv(n_rows, consts["ROWS"]), n_rows)


@trtp.register(f"{NAMESPACE}::LogIntSoftmax")
def log_int_softmax_desc(
    x: trtp.TensorDesc, x0: int, b: int, c: int, n: int, bits: int, octave_steps: int
) -> trtp.TensorDesc:
    return trtp.from_shape_expr(x.shape_expr, trt.uint8)


@trtp.aot_impl(f"{NAMESPACE}::LogIntSoftmax")
def log_int_softmax_aot(
    x: trtp.TensorDesc, x0: int, b: int, c: int, n: int, bits: int, octave_steps: int,
    outputs: tuple[trtp.TensorDesc], tactic: int,
) -> _AotResult:
    n_cols = _last_dim(x)
    rows = launch.default_rows(launch.SOFTMAX_BLOCK)
    if n_cols.is_constant:
        rows = launch.default_rows(min(launch.next_pow2(n_cols.constant_value()),
                                       launch.SOFTMAX_BLOCK))
    consts = launch.softmax_constexprs(x0=x0, b=b, c=c, n=n, bits=bits, rows=rows,
                                       octave_steps=octave_steps)
    kernel = compile_kernel("LogIntSoftmax", {"x": _triton_type(x, "LogIntSoftmax X")}, consts)
    n_rows = x.shape_expr.numel() // n_cols
    return _result(kernel, trtp.cdiv(n_rows, consts["ROWS"]), n_rows, n_cols)


@trtp.register(f"{NAMESPACE}::LogIntMatMul")
def log_int_matmul_desc(
    a: trtp.TensorDesc, v: trtp.TensorDesc, bits: int, zero_point: int, octave_steps: int
) -> trtp.TensorDesc:
    shape = [a.shape_expr[i] for i in range(a.ndim)]
    shape[-1] = _last_dim(v)
    return trtp.from_shape_expr(tuple(shape), trt.int64)


@trtp.aot_impl(f"{NAMESPACE}::LogIntMatMul")
def log_int_matmul_aot(
    a: trtp.TensorDesc, v: trtp.TensorDesc, bits: int, zero_point: int, octave_steps: int,
    outputs: tuple[trtp.TensorDesc], tactic: int,
) -> _AotResult:
    consts = launch.matmul_constexprs(bits=bits, zero_point=zero_point,
                                      octave_steps=octave_steps)
    kernel = compile_kernel("LogIntMatMul", {"v": _triton_type(v, "LogIntMatMul V")}, consts)
    n_r, n_k, n_d = a.shape_expr[a.ndim - 2], _last_dim(a), _last_dim(v)
    n_batch = a.shape_expr.numel() // (n_r * n_k)
    tiles = trtp.cdiv(n_r, consts["BLOCK_R"]) * trtp.cdiv(n_d, consts["BLOCK_D"])
    return _result(kernel, n_batch * tiles, n_batch, n_r, n_k, n_d)
