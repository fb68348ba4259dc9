"""Tiny ViTs with the attention and MLP variants of SwinV2 and EVA-02, written directly in ONNX
(no torch), in the ops their TorchScript/dynamo exports use, for fast recognition and quantization
tests of those matchers:

    cosine    SwinV2: q and k L2-normalised (x / Expand(Clip(ReduceL2(x)))), q·kᵀ times a per-head
              exp(logit scale) [H, 1, 1], plus a constant relative-position bias (the export folds
              the continuous-position MLP), res-post-norm blocks x + norm(branch(x)) and a
              LayerNorm after the patch embedding
    rotary    EVA-02: q and k rotated outside the class token (Slice, x·cos + rotate_half(x)·sin,
              Concat back), pre-norm blocks with a packed SwiGLU MLP
              fc1 ─ Split ─ x₁·σ(x₁)·x₂ ─ fc2
    qknorm    timm's `qk_norm=True`: a LayerNorm over each head's q and k (head_dim channels)
              between the packed projection and Q·Kᵀ, pre-norm blocks
    subln     BEiT-3's sub-LN (timm's `scale_attn_norm` / `scale_mlp_norm`): a LayerNorm between
              A·V and the output projection and between the GELU and fc2, pre-norm blocks
    rmsnorm   AIMv2: every norm an RMSNorm as dynamo writes it at opset 20 (Pow, ReduceMean, Add
              ε, Sqrt, Reciprocal, Mul x, Mul γ), SwiGLU with two fc1 linears
              fc1_g ─ SiLU ─ · fc1_x ─ fc2

The patch embedding, LayerNorms, linears and head are tiny_vit's (`TinyViTConfig` sizes).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx

from onnxvq.models.onnx_builder import GraphBuilder, float_input
from onnxvq.models.tiny_vit import (
    TinyViTConfig,
    _activation,
    _head,
    _layernorm,
    _layernorm_weights,
    _linear,
    _linear_weights,
    _patch_embed,
    make_weights,
)

VARIANTS = ("cosine", "rotary", "qknorm", "subln", "rmsnorm")
_I64 = np.int64


def build_variant(kind: str, config: TinyViTConfig = TinyViTConfig()) -> onnx.ModelProto:
    if kind not in VARIANTS:
        raise ValueError(f"variant {kind!r}: one of {', '.join(VARIANTS)}")
    w = make_weights(config)
    rng = np.random.default_rng(config.seed + 1)
    b = GraphBuilder(config.opset)
    x = _patch_embed(b, config, w)
    if kind == "cosine":  # SwinV2's patch embedding ends with a LayerNorm (its stream's only one)
        w |= _layernorm_weights(rng, "patch_embed.norm", config.dim)
        x = _layernorm(b, config, w, "patch_embed.norm", x)
    for i in range(config.depth):
        pre = f"blocks.{i}."
        if kind == "cosine":
            att = _cosine_attention(b, config, w, pre, rng, x)
            x = b.op("Add", x, _layernorm(b, config, w, pre + "norm1", att))
            hidden = _activation(b, config, _linear(b, w, pre + "mlp.fc1", x))
            mlp = _linear(b, w, pre + "mlp.fc2", hidden)
            x = b.op("Add", x, _layernorm(b, config, w, pre + "norm2", mlp))
        elif kind == "qknorm":
            att = _qknorm_attention(b, config, w, pre, rng,
                                    _layernorm(b, config, w, pre + "norm1", x))
            x = b.op("Add", x, att)
            hidden = _activation(b, config, _linear(b, w, pre + "mlp.fc1",
                                                    _layernorm(b, config, w, pre + "norm2", x)))
            x = b.op("Add", x, _linear(b, w, pre + "mlp.fc2", hidden))
        elif kind in ("subln", "rmsnorm"):
            x = _modern_block(b, config, w, pre, rng, x, kind)
        else:
            att = _rotary_attention(b, config, w, pre, _layernorm(b, config, w, pre + "norm1", x))
            x = b.op("Add", x, att)
            x = b.op("Add", x, _swiglu(b, config, rng, pre,
                                       _layernorm(b, config, w, pre + "norm2", x)))
    if kind == "rmsnorm":
        x, config = _rmsnorm(b, rng, "norm", config.dim, x), replace(config, final_norm=False)
    _head(b, config, w, x)
    inputs = [float_input("input", ["batch", config.channels, config.image, config.image])]
    return b.build(inputs, [float_input("logits", ["batch", config.classes])], name=kind)


def _split_heads(b: GraphBuilder, cfg: TinyViTConfig, w: dict, pre: str, x: str) -> list[str]:
    """q, k, v [B, H, N, D] from the packed projection (timm's unbind: Split + Squeeze)."""
    n, h, d = cfg.tokens, cfg.heads, cfg.head_dim
    qkv = b.op("Reshape", _linear(b, w, pre + "attn.qkv", x), b.const([0, n, 3, h, d], _I64))
    qkv = b.op("Transpose", qkv, perm=[2, 0, 3, 1, 4])
    parts = b.op_multi("Split", qkv, b.const([1, 1, 1], _I64), outputs=3, axis=0)
    return [b.op("Squeeze", p, b.const([0], _I64)) for p in parts]


def _attend(b: GraphBuilder, cfg: TinyViTConfig, w: dict, pre: str, scores: str, v: str,
            subln: bool = False) -> str:
    out = b.op("MatMul", b.op("Softmax", scores, axis=-1), v)
    out = b.op("Reshape", b.op("Transpose", out, perm=[0, 2, 1, 3]),
               b.const([0, cfg.tokens, cfg.dim], _I64))
    if subln:  # BEiT-3: proj(norm(A·V))
        out = _layernorm(b, cfg, w, pre + "attn.norm", out)
    return _linear(b, w, pre + "attn.proj", out)


def _modern_block(b: GraphBuilder, cfg: TinyViTConfig, w: dict, pre: str, rng, x: str,
                  kind: str) -> str:
    """A pre-norm block with BEiT-3's sub-LNs (`subln`) or AIMv2's RMSNorms and SwiGLU."""
    if kind == "subln":
        for name, dim in (("attn.norm", cfg.dim), ("mlp.norm", cfg.dim * cfg.mlp_ratio)):
            w |= _layernorm_weights(rng, pre + name, dim)
        q, k, v = _split_heads(b, cfg, w, pre, _layernorm(b, cfg, w, pre + "norm1", x))
        scores = b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2]))
        scores = b.op("Mul", scores, b.const(cfg.head_dim ** -0.5))
        x = b.op("Add", x, _attend(b, cfg, w, pre, scores, v, subln=True))
        hidden = _activation(b, cfg, _linear(b, w, pre + "mlp.fc1",
                                             _layernorm(b, cfg, w, pre + "norm2", x)))
        hidden = _layernorm(b, cfg, w, pre + "mlp.norm", hidden)
        return b.op("Add", x, _linear(b, w, pre + "mlp.fc2", hidden))
    q, k, v = _split_heads(b, cfg, w, pre, _rmsnorm(b, rng, pre + "norm1", cfg.dim, x))
    scores = b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2]))
    x = b.op("Add", x, _attend(b, cfg, w, pre, b.op("Mul", scores, b.const(cfg.head_dim ** -0.5)),
                               v))
    h = _rmsnorm(b, rng, pre + "norm2", cfg.dim, x)
    hidden = cfg.dim * cfg.mlp_ratio
    for name, fan_in, fan_out in (("fc1_g", cfg.dim, hidden), ("fc1_x", cfg.dim, hidden),
                                  ("fc2", hidden, cfg.dim)):
        w |= _linear_weights(rng, f"{pre}mlp.{name}", fan_in, fan_out)
    gate = _linear(b, w, pre + "mlp.fc1_g", h)
    gated = b.op("Mul", b.op("Mul", gate, b.op("Sigmoid", gate)),
                 _linear(b, w, pre + "mlp.fc1_x", h))
    return b.op("Add", x, _linear(b, w, pre + "mlp.fc2", gated))


def _rmsnorm(b: GraphBuilder, rng, name: str, dim: int, x: str) -> str:
    """x·γ / √(mean(x²) + ε) in dynamo's opset-20 ops for torch's rms_norm."""
    mean = b.reduce_mean(b.op("Pow", x, b.const(2.0)), [-1])
    inv = b.op("Reciprocal", b.op("Sqrt", b.op("Add", mean, b.const(1e-6))))
    gamma = rng.uniform(0.5, 1.5, dim).astype(np.float32)
    return b.op("Mul", b.op("Mul", x, inv), b.weight(name + ".weight", gamma))


def _l2_normalise(b: GraphBuilder, t: str) -> str:
    """F.normalize(t, dim=-1) as TorchScript exports it."""
    norm = b.op("Clip", b.op("ReduceL2", t, axes=[-1], keepdims=1), b.const(1e-12))
    return b.op("Div", t, b.op("Expand", norm, b.op("Shape", t)))


def _cosine_attention(b: GraphBuilder, cfg: TinyViTConfig, w: dict, pre: str, rng, x: str) -> str:
    q, k, v = _split_heads(b, cfg, w, pre, x)
    k_t = b.op("Transpose", _l2_normalise(b, k), perm=[0, 1, 3, 2])
    scores = b.op("MatMul", _l2_normalise(b, q), k_t)
    tau = np.log(rng.uniform(8, 14, (cfg.heads, 1, 1))).astype(np.float32)  # init log(10)
    scores = b.op("Mul", scores, b.weight(pre + "attn.logit_scale", np.exp(tau)))
    bias = 16 / (1 + np.exp(-rng.standard_normal((1, cfg.heads, cfg.tokens, cfg.tokens))))
    scores = b.op("Add", scores, b.weight(pre + "attn.rel_bias", bias.astype(np.float32)))
    return _attend(b, cfg, w, pre, scores, v)


def _qknorm_attention(b: GraphBuilder, cfg: TinyViTConfig, w: dict, pre: str, rng,
                      x: str) -> str:
    q, k, v = _split_heads(b, cfg, w, pre, x)

    def norm(t: str, name: str) -> str:  # over the head_dim channels of [B, H, N, D]
        n = f"{pre}attn.{name}"
        nw = _layernorm_weights(rng, n, cfg.head_dim)
        return b.op("LayerNormalization", t, b.weight(n + ".weight", nw[n + ".weight"]),
                    b.weight(n + ".bias", nw[n + ".bias"]), axis=-1, epsilon=1e-6)

    q, k = norm(q, "q_norm"), norm(k, "k_norm")
    scores = b.op("MatMul", b.op("Mul", q, b.const(cfg.head_dim ** -0.5)),
                  b.op("Transpose", k, perm=[0, 1, 3, 2]))
    return _attend(b, cfg, w, pre, scores, v)


def _rotary_attention(b: GraphBuilder, cfg: TinyViTConfig, w: dict, pre: str, x: str) -> str:
    q, k, v = _split_heads(b, cfg, w, pre, x)
    cos, sin = _rotary_tables(cfg)
    q, k = (_rotate(b, cfg, t, cos, sin) for t in (q, k))
    scores = b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2]))
    return _attend(b, cfg, w, pre, b.op("Mul", scores, b.const(cfg.head_dim ** -0.5)), v)


def _rotary_tables(cfg: TinyViTConfig) -> tuple[np.ndarray, np.ndarray]:
    half, grid = cfg.head_dim // 2, cfg.image // cfg.patch
    freqs = 1.0 / 10000 ** (np.arange(half) / half)
    angles = np.arange(grid * grid)[:, None] * freqs[None, :] / grid
    angles = np.concatenate([angles, angles], axis=1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _rotate(b: GraphBuilder, cfg: TinyViTConfig, t: str, cos, sin) -> str:
    """Concat(t[:, :, :1], rest·cos + rotate_half(rest)·sin) over the token axis."""
    n, half = cfg.tokens, cfg.head_dim // 2

    def cut(x: str, start: int, end: int, axis: int) -> str:
        return b.op("Slice", x, b.const([start], _I64), b.const([end], _I64),
                    b.const([axis], _I64))

    cls, rest = cut(t, 0, 1, 2), cut(t, 1, n, 2)
    rotated = b.op("Concat", b.op("Neg", cut(rest, half, 2 * half, 3)),
                   cut(rest, 0, half, 3), axis=-1)
    rest = b.op("Add", b.op("Mul", rest, b.const(cos)), b.op("Mul", rotated, b.const(sin)))
    return b.op("Concat", cls, rest, axis=2)


def _swiglu(b: GraphBuilder, cfg: TinyViTConfig, rng, pre: str, x: str) -> str:
    hidden = cfg.dim * cfg.mlp_ratio
    w = _linear_weights(rng, pre + "mlp.fc1", cfg.dim, 2 * hidden)
    w |= _linear_weights(rng, pre + "mlp.fc2", hidden, cfg.dim)
    x1, x2 = b.op_multi("Split", _linear(b, w, pre + "mlp.fc1", x), b.const([hidden, hidden],
                                                                              _I64),
                        outputs=2, axis=-1)
    gated = b.op("Mul", b.op("Mul", x1, b.op("Sigmoid", x1)), x2)
    return _linear(b, w, pre + "mlp.fc2", gated)
