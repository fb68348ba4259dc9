"""Launch geometry of the Triton kernels, and host launchers that run them on torch tensors.

The ``*_constexprs`` functions are shared by the host launchers below and by the TensorRT
ahead-of-time plugins (``onnxvq.plugins.trt.registry``), so both compile the same kernel variant.
The launchers take and return numpy arrays; they run the kernels on ``device`` ("cpu" needs
Triton's interpreter, ``TRITON_INTERPRET=1`` set before ``triton`` is first imported; "cuda"
needs a GPU) and exist to test the kernels against the reference and to run them outside TensorRT.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from onnxvq.core.errors import OnnxvqError
from onnxvq.plugins.reference import MAX_CHANNELS, MAX_ROW, max_code, sum_bits, zero_code
from onnxvq.plugins.reference.softmax import _check_steps

OUTPUT_RANGES = {TensorProto.UINT8: (0, 255), TensorProto.INT8: (-128, 127)}
_NUMPY_OUT = {TensorProto.UINT8: np.uint8, TensorProto.INT8: np.int8}
# Elements per program tile: int64 tiles beyond this spill registers on the GPU for no gain.
TILE_ELEMENTS = 4096
SOFTMAX_BLOCK = 1024
MATMUL_BLOCKS = (16, 16, 32)  # BLOCK_R, BLOCK_K, BLOCK_D


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def default_rows(block: int) -> int:
    return max(1, min(16, TILE_ELEMENTS // block))


def layer_norm_constexprs(
    c: int, *, zero_point: int, epsilon: int, gamma_shift: int, output_dtype: int, rows: int
) -> dict[str, int]:
    if not 1 <= c <= MAX_CHANNELS:
        raise OnnxvqError(f"IntLayerNorm supports 1..{MAX_CHANNELS} channels, got {c}")
    if output_dtype not in OUTPUT_RANGES:
        raise OnnxvqError(f"IntLayerNorm output_dtype must be UINT8 or INT8, got {output_dtype}")
    lo, hi = OUTPUT_RANGES[output_dtype]
    return {
        "C": int(c), "BLOCK_C": next_pow2(c), "ROWS": next_pow2(rows),
        "ZERO_POINT": int(zero_point), "EPSILON": int(epsilon), "GAMMA_SHIFT": int(gamma_shift),
        "LO": lo, "HI": hi,
    }


def softmax_constexprs(*, x0: int, b: int, c: int, n: int, bits: int, rows: int,
                       octave_steps: int = 1) -> dict[str, int]:
    _check_steps(octave_steps)
    return {
        "BLOCK": SOFTMAX_BLOCK, "ROWS": next_pow2(rows), "X0": int(x0), "B": int(b), "C": int(c),
        "N": int(n), "M": max_code(bits), "Z": zero_code(bits), "STEPS": int(octave_steps),
        "SUM_BITS": sum_bits(octave_steps),
    }


def matmul_constexprs(*, bits: int, zero_point: int, octave_steps: int = 1) -> dict[str, int]:
    _check_steps(octave_steps)
    block_r, block_k, block_d = MATMUL_BLOCKS
    return {
        "BLOCK_R": block_r, "BLOCK_K": block_k, "BLOCK_D": block_d,
        "M": max_code(bits), "ZERO_POINT": int(zero_point), "STEPS": int(octave_steps),
    }


def int_layer_norm(
    x: np.ndarray, alpha: np.ndarray, gamma: np.ndarray, beta: np.ndarray, *,
    zero_point: int, epsilon: int, gamma_shift: int, output_dtype: int = TensorProto.UINT8,
    rows_per_program: int | None = None, device: str = "cpu",
) -> np.ndarray:
    """IntLayerNorm through the Triton kernel; same signature and result as the reference."""
    from onnxvq.plugins.trt.kernels import int_layer_norm_kernel

    torch = _torch()
    c = x.shape[-1]
    n_rows = x.size // c
    consts = layer_norm_constexprs(
        c, zero_point=zero_point, epsilon=epsilon, gamma_shift=gamma_shift,
        output_dtype=output_dtype, rows=rows_per_program or default_rows(next_pow2(c)),
    )
    y = np.empty(x.shape, _NUMPY_OUT[output_dtype])
    args = [_to(torch, a, device) for a in (x, alpha, gamma, beta, y)]
    grid = (_cdiv(n_rows, consts["ROWS"]),)
    int_layer_norm_kernel[grid](*args[:4], n_rows, args[4], **consts)
    return args[4].cpu().numpy()


def log_int_softmax(
    x: np.ndarray, *, x0: int, b: int, c: int, n: int, bits: int = 4, octave_steps: int = 1,
    rows_per_program: int | None = None, device: str = "cpu",
) -> np.ndarray:
    """LogIntSoftmax through the Triton kernel; uint8 log2 codes like the reference."""
    from onnxvq.plugins.trt.kernels import log_int_softmax_kernel

    torch = _torch()
    n_cols = x.shape[-1]
    if not 1 <= n_cols <= MAX_ROW:
        raise OnnxvqError(f"LogIntSoftmax rows must have 1..{MAX_ROW} elements")
    n_rows = x.size // n_cols
    consts = softmax_constexprs(
        x0=x0, b=b, c=c, n=n, bits=bits, octave_steps=octave_steps,
        rows=rows_per_program or default_rows(min(next_pow2(n_cols), SOFTMAX_BLOCK)),
    )
    xt, yt = _to(torch, x, device), _to(torch, np.empty(x.shape, np.uint8), device)
    log_int_softmax_kernel[(_cdiv(n_rows, consts["ROWS"]),)](xt, n_rows, n_cols, yt, **consts)
    return yt.cpu().numpy()


def log_int_matmul(
    a: np.ndarray, v: np.ndarray, *, bits: int = 4, zero_point: int = 0, octave_steps: int = 1,
    device: str = "cpu",
) -> np.ndarray:
    """LogIntMatMul through the Triton kernel; int64 accumulators like the reference."""
    from onnxvq.plugins.trt.kernels import log_int_matmul_kernel

    torch = _torch()
    if a.ndim < 2 or a.shape[:-2] != v.shape[:-2] or a.shape[-1] != v.shape[-2]:
        raise OnnxvqError(f"LogIntMatMul shapes {a.shape} and {v.shape} do not match")
    n_r, n_k, n_d = a.shape[-2], a.shape[-1], v.shape[-1]
    n_batch = int(np.prod(a.shape[:-2], dtype=np.int64))
    consts = matmul_constexprs(bits=bits, zero_point=zero_point, octave_steps=octave_steps)
    y = np.empty((*a.shape[:-1], n_d), np.int64)
    at, vt, yt = (_to(torch, arr, device) for arr in (a, v, y))
    tiles = _cdiv(n_r, consts["BLOCK_R"]) * _cdiv(n_d, consts["BLOCK_D"])
    log_int_matmul_kernel[(n_batch * tiles,)](at, vt, n_batch, n_r, n_k, n_d, yt, **consts)
    return yt.cpu().numpy()


def _cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def _to(torch, arr: np.ndarray, device: str):
    return torch.from_numpy(np.ascontiguousarray(arr)).to(device)


def _torch():
    try:
        import torch
    except ImportError as err:  # torch is the [export] extra, not a core dependency
        raise OnnxvqError("running the Triton kernels from Python needs torch") from err
    return torch
