"""QLinearAttention and LogIntAttention: fused int8 attention references (plugins/README.md).

    packed QKV codes X (uint8 [B, N, 3, H, D]) --split heads--> q, k, v
      S = (q - z_q)(k - z_k)^T                                 int32, exact
      QLinearAttention with `bias` [W, 1|H, N, N]: x = S * qk_scale + bias[b mod W] (float32)
      QLinearAttention: P = uint8 codes of softmax(S * qk_scale) with (probs_scale, probs_zp)
      LogIntAttention:  P = LogIntSoftmax(int8 codes of x with scores_scale), x as above
                        (x = S * qk_scale + bias[b mod W] with its own optional `bias`)
      acc = (P - z_p)(v - z_v)  or  LogIntMatMul(P, v)           integer, exact
      Y = uint8 codes of acc * acc_scale with (out_scale, out_zp), heads merged [B, N, H * D]

Everything but QLinearAttention's float softmax is exactly specified (float32 products and
quotients rounded once, IEEE, as ONNX Runtime's MatMulIntegerToFloat, Mul and QuantizeLinear do).
"""

from __future__ import annotations

import numpy as np

from onnxvq.core.errors import OnnxvqError
from onnxvq.plugins.reference.softmax import log_int_matmul, log_int_softmax

MAX_HEAD_DIM = 256  # |S| <= D * 255^2 < 2^24: the scores are exact in float32
MAX_TOKENS = 1 << 15  # |A.V| <= N * 255^2 < 2^31: int32 accumulators in the kernels


def split_heads(x: np.ndarray, num_heads: int,
                qkv_layout: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q, k, v as int64 [B, H, N, D] from packed codes [B, N, 3, H, D] or [B, N, 3 * H * D];
    with qkv_layout 1 from [B, N, H, 3 * D] (q, k, v packed per head) or [B, N, H * 3 * D]."""
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim not in ((3, 4) if qkv_layout == 1 else (3, 5)):
        raise OnnxvqError("attention input must be uint8 [B, N, 3, H, D] or [B, N, 3*H*D]"
                          if qkv_layout != 1 else "attention input (qkv_layout 1) must be "
                          "uint8 [B, N, H, 3*D] or [B, N, H*3*D]")
    b, n = x.shape[:2]
    width = int(np.prod(x.shape[2:]))
    if num_heads < 1 or width % (3 * num_heads):
        raise OnnxvqError(f"packed width {width} is not 3 * num_heads({num_heads}) * head_dim")
    d = width // (3 * num_heads)
    if d > MAX_HEAD_DIM or n > MAX_TOKENS:
        raise OnnxvqError(f"head dim {d} or {n} tokens exceed {MAX_HEAD_DIM} / {MAX_TOKENS}")
    parts = (x.reshape(b, n, num_heads, 3, d).transpose(3, 0, 2, 1, 4) if qkv_layout == 1 else
             x.reshape(b, n, 3, num_heads, d).transpose(2, 0, 3, 1, 4)).astype(np.int64)
    return parts[0], parts[1], parts[2]


def scores(q: np.ndarray, k: np.ndarray, zq: int, zk: int) -> np.ndarray:
    """S = (q - z_q)(k - z_k)^T per head, exact int64 [B, H, N, N]."""
    return (q - zq) @ np.swapaxes(k - zk, -1, -2)


def quantize(x: np.ndarray, scale: float, zero_point: int, lo: int, hi: int) -> np.ndarray:
    """sat(rne(x / scale) + zp): ONNX QuantizeLinear with float32 division."""
    u = np.asarray(x, np.float32) / np.float32(scale)
    u = np.clip(u, -2.0 ** 40, 2.0 ** 40)  # saturates the same; keeps the int64 cast defined
    return np.clip(np.rint(u).astype(np.int64) + zero_point, lo, hi)


def output_codes(acc: np.ndarray, acc_scale: float, out_scale: float, out_zp: int) -> np.ndarray:
    """uint8 [B, N, H * D]: sat(rne((f32(acc) * acc_scale) / out_scale) + out_zp), heads merged."""
    y = acc.astype(np.float32) * np.float32(acc_scale)
    b, h, n, d = acc.shape
    y = y.transpose(0, 2, 1, 3).reshape(b, n, h * d)
    return quantize(y, out_scale, out_zp, 0, 255).astype(np.uint8)


def float_scores(s: np.ndarray, qk_scale: float) -> np.ndarray:
    return s.astype(np.float32) * np.float32(qk_scale)


def add_bias(xf: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """x + bias[b mod W] in float32 (one rounding) for scores x [B, H, N, N] and an additive bias
    [W, 1|H, N, N]: W = 1 a bias shared over the batch (relative positions), W > 1 a window
    mask repeating with period W over the batch (Swin's shifted windows: B = images * W)."""
    bias = np.asarray(bias, np.float32)
    b, h, n, _ = xf.shape
    w = bias.shape[0] if bias.ndim == 4 else 0
    if w == 0 or b % w or bias.shape[1] not in (1, h) or bias.shape[2:] != (n, n):
        raise OnnxvqError(f"attention bias {list(bias.shape)} is not [W, 1|{h}, {n}, {n}] with "
                          f"W dividing the batch {b}")
    return (xf.reshape(b // w, w, h, n, n) + bias[None]).reshape(b, h, n, n)


def qlinear_attention(x: np.ndarray, *, num_heads: int, q_zero_point: int, k_zero_point: int,
                      v_zero_point: int, qk_scale: float, probs_scale: float,
                      probs_zero_point: int, acc_scale: float, out_scale: float,
                      out_zero_point: int, bias: np.ndarray | None = None,
                      qkv_layout: int = 0) -> np.ndarray:
    """The W8/A8 mode: float softmax, its probabilities as uniform uint8 codes; `bias` (optional,
    float32 [W, 1|H, N, N]) is added to the float scores before the softmax; `qkv_layout` 1
    reads X as [B, N, H, 3·D] (TinyViT's per-head packing)."""
    q, k, v = split_heads(x, num_heads, qkv_layout)
    xf = float_scores(scores(q, k, q_zero_point, k_zero_point), qk_scale)
    p = quantized_probs(xf if bias is None else add_bias(xf, bias), probs_scale,
                        probs_zero_point)
    acc = (p - probs_zero_point) @ (v - v_zero_point)
    return output_codes(acc, acc_scale, out_scale, out_zero_point)


def quantized_probs(xf: np.ndarray, probs_scale: float, probs_zp: int) -> np.ndarray:
    """P = sat(rne(e_j * (1 / (probs_scale * sum e))) + zp), e = exp(x - max) in float32.

    The one inexact step: backends use their own exp and summation order, so a code whose
    p / probs_scale lies within ~1e-6 (relative) of a half-integer may differ by one."""
    e = np.exp(xf - xf.max(axis=-1, keepdims=True))
    r = np.float32(1) / (e.sum(axis=-1, keepdims=True, dtype=np.float32) * np.float32(probs_scale))
    return np.clip(np.rint(e * r).astype(np.int64) + probs_zp, 0, 255)


def log_int_attention(x: np.ndarray, *, num_heads: int, q_zero_point: int, k_zero_point: int,
                      v_zero_point: int, qk_scale: float, scores_scale: float, x0: int, b: int,
                      c: int, n: int, bits: int = 4, octave_steps: int = 1, acc_scale: float,
                      out_scale: float, out_zero_point: int,
                      bias: np.ndarray | None = None) -> np.ndarray:
    """The --lis mode: int8 scores, LogIntSoftmax codes, LogIntMatMul; exact throughout.
    `bias` (optional, float32 [W, 1|H, N, N]) is added to the float scores (one float32
    rounding, as QLinearAttention's) before their int8 codes."""
    q, k, v = split_heads(x, num_heads)
    xs = float_scores(scores(q, k, q_zero_point, k_zero_point), qk_scale)
    xs = xs if bias is None else add_bias(xs, bias)
    codes = log_int_softmax(quantize(xs, scores_scale, 0, -128, 127).astype(np.int8),
                            x0=x0, b=b, c=c, n=n, bits=bits, octave_steps=octave_steps)
    acc = log_int_matmul(codes, v.astype(np.uint8), bits=bits, zero_point=v_zero_point,
                         octave_steps=octave_steps)
    return output_codes(acc, acc_scale, out_scale, out_zero_point)
