"""Ahead-of-time compilation of the Triton kernels to PTX for TensorRT's AOT plugins.

TensorRT launches an AOT plugin kernel with exactly (input pointers, int32 extra args, output
pointers). Triton >= 3.3 appends two hidden pointer parameters (global and profile scratch) to
every kernel; when the kernel uses neither (scratch sizes 0) they are never read, and this module
removes them from the PTX entry so the parameter list is the one TensorRT passes. A kernel that
does need scratch memory is refused instead of being launched with garbage pointers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from onnxvq.core.errors import OnnxvqError

# Kernel argument names and the Triton type of each non-constexpr argument, in TensorRT's order;
# "{x}" style fields are filled with the tensors' element types at compile time.
SIGNATURES = {
    "IntLayerNorm": ("int_layer_norm_kernel", {
        "x_ptr": "*{x}", "alpha_ptr": "*u8", "gamma_ptr": "*i32", "beta_ptr": "*i64",
        "n_rows": "i32", "y_ptr": "*{y}",
    }),
    "LogIntSoftmax": ("log_int_softmax_kernel", {
        "x_ptr": "*{x}", "n_rows": "i32", "n_cols": "i32", "y_ptr": "*u8",
    }),
    "LogIntMatMul": ("log_int_matmul_kernel", {
        "a_ptr": "*u8", "v_ptr": "*{v}", "n_batch": "i32", "n_r": "i32", "n_k": "i32",
        "n_d": "i32", "y_ptr": "*i64",
    }),
}
NUM_WARPS = 4


class KernelCompileError(OnnxvqError):
    """Triton could not compile a plugin kernel into PTX TensorRT can launch."""


@dataclass(frozen=True)
class CompiledKernel:
    name: str
    ptx: str
    num_warps: int
    shared_mem: int
    num_params: int

    @property
    def block_x(self) -> int:
        return self.num_warps * 32


def compile_kernel(
    op: str, dtypes: dict[str, str], constexprs: dict[str, int], *, target=None
) -> CompiledKernel:
    """PTX of `op`'s kernel for element types `dtypes` (e.g. {"x": "u8", "y": "i8"}).

    `target` is a ``triton.backends.compiler.GPUTarget``; None means the current GPU.
    """
    import triton

    from onnxvq.plugins.trt import kernels

    kernel_name, template = SIGNATURES[op]
    fn = _jit_function(getattr(kernels, kernel_name))
    signature = {arg: kind.format(**dtypes) for arg, kind in template.items()}
    signature.update({name: "constexpr" for name in constexprs})
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=dict(constexprs))
    try:
        compiled = triton.compile(source, target=target, options={"num_warps": NUM_WARPS})
    except Exception as err:  # Triton raises CompilationError, RuntimeError, ... per stage
        raise KernelCompileError(f"{op}: Triton failed to compile {kernel_name}: {err}") from err
    meta = compiled.metadata
    if getattr(meta, "global_scratch_size", 0) or getattr(meta, "profile_scratch_size", 0):
        raise KernelCompileError(f"{op}: kernel needs scratch memory TensorRT does not provide")
    ptx = strip_params(compiled.asm["ptx"], meta.name, keep=len(template))
    return CompiledKernel(meta.name, ptx, meta.num_warps, meta.shared, len(template))


def strip_params(ptx: str, entry: str, keep: int) -> str:
    """Drop the `.param`s after the first `keep` of `entry`, checking the body never reads them."""
    head = re.search(rf"\.entry\s+{re.escape(entry)}\s*\((.*?)\)", ptx, re.S)
    if head is None:
        raise KernelCompileError(f"entry {entry} not found in the PTX")
    params = [p.strip() for p in head.group(1).split(",") if p.strip()]
    if len(params) < keep:
        raise KernelCompileError(f"{entry} has {len(params)} params, expected at least {keep}")
    for dropped in params[keep:]:
        name = dropped.split()[-1]
        if ptx.count(name) != 1:  # only its declaration: the body never loads it
            raise KernelCompileError(f"{entry} reads its hidden parameter {name}")
    body = ",\n\t".join(params[:keep])
    return ptx[: head.start(1)] + "\n\t" + body + "\n" + ptx[head.end(1):]


def _jit_function(kernel):
    # Under TRITON_INTERPRET=1 @triton.jit yields interpreter objects (the helpers too), which
    # no backend can compile.
    from triton.runtime.jit import JITFunction

    if isinstance(kernel, JITFunction):
        return kernel
    raise KernelCompileError(
        "the kernels were imported under TRITON_INTERPRET=1; compile them in a process without it"
    )
