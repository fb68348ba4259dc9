"""A small Vision Transformer written directly in ONNX, for fast tests and the demo (no torch).

The graph reproduces what the TorchScript exporter emits for timm / Hugging Face ViTs, one option
per exporter habit (see TinyViTConfig), so that structure recognition and the quantization passes
can be tested on every variant in milliseconds:

    input -> Conv(stride=patch) -> Reshape -> Transpose -> Concat(cls) -> Add(pos)
          -> depth x block -> [LayerNorm] -> Gather(token 0) -> Gemm -> logits

Weights depend only on the sizes and the seed, never on the structural options, so variants that
compute the same function (fused/decomposed LayerNorm, packed/separate QKV, the three score
scalings) give the same logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxvq.core.errors import OnnxvqError
from onnxvq.models.architecture import ArchitectureCounts
from onnxvq.models.onnx_builder import ExternalWeights, GraphBuilder, float_input

_CHOICES = {
    "norm": ("pre", "post"),
    "layernorm": ("fused", "decomposed"),
    "activation": ("gelu_erf", "gelu_tanh", "relu"),
    "qkv": ("packed", "packed_split", "separate"),
    "scale": ("mul_scores", "div_scores", "sqrt_qk"),
}
LN_EPS = 1e-6
_I64 = np.int64


@dataclass(frozen=True)
class TinyViTConfig:
    depth: int = 2
    dim: int = 64
    heads: int = 4
    mlp_ratio: int = 2
    patch: int = 4
    image: int = 32
    channels: int = 3
    classes: int = 10
    norm: str = "pre"
    layernorm: str = "fused"
    activation: str = "gelu_erf"
    qkv: str = "packed"
    scale: str = "mul_scores"
    final_norm: bool = True
    cls_token: bool = True
    opset: int = 17
    seed: int = 0

    def __post_init__(self) -> None:
        for field, allowed in _CHOICES.items():
            if getattr(self, field) not in allowed:
                raise OnnxvqError(f"TinyViTConfig.{field}={getattr(self, field)!r}: "
                                  f"expected one of {allowed}")
        if self.dim % self.heads or self.image % self.patch:
            raise OnnxvqError("TinyViTConfig: dim must divide by heads and image by patch")
        if not 13 <= self.opset <= 21:
            raise OnnxvqError(f"TinyViTConfig.opset={self.opset}: expected 13..21")
        if self.layernorm == "fused" and self.opset < 17:
            raise OnnxvqError("LayerNormalization needs opset >= 17; use layernorm='decomposed'")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def tokens(self) -> int:
        return (self.image // self.patch) ** 2 + int(self.cls_token)


def describe(config: TinyViTConfig = TinyViTConfig()) -> ArchitectureCounts:
    """The exact structure counts `build_tiny_vit(config)` produces."""
    per_block_linears = (3 if config.qkv == "separate" else 1) + 1 + 2
    return ArchitectureCounts(
        blocks=config.depth,
        attentions=config.depth,
        layernorms=2 * config.depth + int(config.final_norm),
        mlps=config.depth,
        residual_adds=2 * config.depth,
        softmax=config.depth,
        linears=config.depth * per_block_linears + 1,
    )


def build_tiny_vit(config: TinyViTConfig = TinyViTConfig(), *,
                   external: ExternalWeights | None = None) -> onnx.ModelProto:
    """The model; with `external`, its weights go to that file as they are made (models over
    2 GB: the returned proto holds only references, `save_tiny_vit` writes both)."""
    weights = make_weights(config)
    b = GraphBuilder(config.opset, external=external)
    x = _patch_embed(b, config, weights)
    for i in range(config.depth):
        x = _block(b, config, weights, i, x)
    _head(b, config, weights, x)
    inputs = [float_input("input", ["batch", config.channels, config.image, config.image])]
    outputs = [float_input("logits", ["batch", config.classes])]
    return b.build(inputs, outputs, name="tiny_vit")


def save_tiny_vit(config: TinyViTConfig, path: str | Path) -> Path:
    """Build `config` with its weights written to `<path>.data` as they are made, and the graph
    to `path` (the layout `onnxvq.core.graph.save_model` writes for models over 2 GB). Peak
    memory is the weights dict, never a second copy in a proto."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with ExternalWeights(path.with_name(path.name + ".data")) as sink:
        model = build_tiny_vit(config, external=sink)
    onnx.save_model(model, str(path))
    return path


# ---------------------------------------------------------------- weights


def make_weights(config: TinyViTConfig) -> dict[str, np.ndarray]:
    """Parameters by module path; Linear weights are stored [in, out] (MatMul layout).

    Linears use a fan-in-scaled truncated normal: at the 0.02 std of a fresh init the attention
    of a 64-wide model would be uniform, while trained ViTs have peaked softmax rows. A few
    residual-stream channels are scaled by 10-30x (patch conv, cls token, position embedding),
    the inter-channel spread that makes per-tensor LayerNorm quantization fail and PTS matter.
    """
    rng = np.random.default_rng(config.seed)
    dim, hidden, c, p = config.dim, config.dim * config.mlp_ratio, config.channels, config.patch
    w: dict[str, np.ndarray] = {
        "patch_embed.weight": _trunc_normal(rng, (dim, c, p, p), 1 / math.sqrt(c * p * p)),
        "patch_embed.bias": _trunc_normal(rng, (dim,), 0.02),
        "cls_token": _trunc_normal(rng, (1, 1, dim), 0.02),
        "pos_embed": _trunc_normal(rng, (1, (config.image // p) ** 2 + 1, dim), 0.02),
    }
    outliers = rng.choice(dim, size=max(1, dim // 16), replace=False)
    gains = rng.uniform(10, 30, size=outliers.size).astype(np.float32)
    w["patch_embed.weight"][outliers] *= gains[:, None, None, None]
    w["patch_embed.bias"][outliers] *= gains
    for name in ("cls_token", "pos_embed"):
        w[name][..., outliers] *= gains
    if not config.cls_token:
        w["pos_embed"] = w["pos_embed"][:, 1:]
    for i in range(config.depth):
        pre = f"blocks.{i}."
        w |= _layernorm_weights(rng, pre + "norm1", dim)
        qk = _trunc_normal(rng, (dim, 2 * dim), 1.5 / math.sqrt(dim))
        v = _trunc_normal(rng, (dim, dim), 1 / math.sqrt(dim))
        w[pre + "attn.qkv.weight"] = np.concatenate([qk, v], axis=1)
        w[pre + "attn.qkv.bias"] = _trunc_normal(rng, (3 * dim,), 0.02)
        w |= _linear_weights(rng, pre + "attn.proj", dim, dim)
        w |= _layernorm_weights(rng, pre + "norm2", dim)
        w |= _linear_weights(rng, pre + "mlp.fc1", dim, hidden)
        w |= _linear_weights(rng, pre + "mlp.fc2", hidden, dim)
    w |= _layernorm_weights(rng, "norm", dim)
    w["head.weight"] = _trunc_normal(rng, (config.classes, dim), 1 / math.sqrt(dim))  # Gemm transB
    w["head.bias"] = _trunc_normal(rng, (config.classes,), 0.02)
    return w


def _trunc_normal(rng: np.random.Generator, shape: tuple, std: float) -> np.ndarray:
    """N(0, std) truncated at two standard deviations (redrawn, not clipped, like torch)."""
    x = rng.standard_normal(shape)
    bad = np.abs(x) > 2
    while bad.any():
        x[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(x) > 2
    return (x * std).astype(np.float32)


def _linear_weights(rng: np.random.Generator, name: str, n_in: int, n_out: int) -> dict:
    return {f"{name}.weight": _trunc_normal(rng, (n_in, n_out), 1 / math.sqrt(n_in)),
            f"{name}.bias": _trunc_normal(rng, (n_out,), 0.02)}


def _layernorm_weights(rng: np.random.Generator, name: str, dim: int) -> dict:
    gamma = (1 + 0.25 * _trunc_normal(rng, (dim,), 1.0)).astype(np.float32)
    return {f"{name}.weight": gamma, f"{name}.bias": _trunc_normal(rng, (dim,), 0.05)}


# ---------------------------------------------------------------- graph pieces


def _patch_embed(b: GraphBuilder, cfg: TinyViTConfig, w: dict) -> str:
    p, grid = cfg.patch, cfg.image // cfg.patch
    x = b.op("Conv", "input", b.weight("patch_embed.weight", w["patch_embed.weight"]),
             b.weight("patch_embed.bias", w["patch_embed.bias"]),
             kernel_shape=[p, p], strides=[p, p])
    x = b.op("Reshape", x, b.const([0, cfg.dim, grid * grid], _I64))  # flatten(2)
    x = b.op("Transpose", x, perm=[0, 2, 1])
    if cfg.cls_token:
        # cls_token.expand(B, -1, -1): the batch size comes from the input's shape at run time.
        batch = b.op("Gather", b.op("Shape", "input"), b.const([0], _I64), axis=0)
        target = b.op("Concat", batch, b.const([1, 1], _I64), axis=0)
        cls = b.op("Expand", b.weight("cls_token", w["cls_token"]), target)
        x = b.op("Concat", cls, x, axis=1)
    return b.op("Add", x, b.weight("pos_embed", w["pos_embed"]))


def _block(b: GraphBuilder, cfg: TinyViTConfig, w: dict, i: int, x: str) -> str:
    pre = f"blocks.{i}."
    if cfg.norm == "pre":
        x = b.op("Add", x, _attention(b, cfg, w, pre, _layernorm(b, cfg, w, pre + "norm1", x)))
        return b.op("Add", x, _mlp(b, cfg, w, pre, _layernorm(b, cfg, w, pre + "norm2", x)))
    x = _layernorm(b, cfg, w, pre + "norm1", b.op("Add", x, _attention(b, cfg, w, pre, x)))
    return _layernorm(b, cfg, w, pre + "norm2", b.op("Add", x, _mlp(b, cfg, w, pre, x)))


def _head(b: GraphBuilder, cfg: TinyViTConfig, w: dict, x: str) -> str:
    if cfg.final_norm:
        x = _layernorm(b, cfg, w, "norm", x)
    if cfg.cls_token:
        x = b.op("Gather", x, b.const(0, _I64), axis=1)  # scalar index drops the token axis
    else:
        x = b.reduce_mean(x, [1], keepdims=0)
    return b.op("Gemm", x, b.weight("head.weight", w["head.weight"]),
                b.weight("head.bias", w["head.bias"]), transB=1, out="logits")


def _linear(b: GraphBuilder, w: dict, name: str, x: str) -> str:
    weight = b.weight(f"{name}.weight", w[f"{name}.weight"])
    bias = b.weight(f"{name}.bias", w[f"{name}.bias"])
    # The TorchScript exporter emits Linear on 3-D inputs as MatMul then Add(bias, y).
    return b.op("Add", bias, b.op("MatMul", x, weight))


def _layernorm(b: GraphBuilder, cfg: TinyViTConfig, w: dict, name: str, x: str) -> str:
    gamma = b.weight(f"{name}.weight", w[f"{name}.weight"])
    beta = b.weight(f"{name}.bias", w[f"{name}.bias"])
    if cfg.layernorm == "fused":
        return b.op("LayerNormalization", x, gamma, beta, axis=-1, epsilon=LN_EPS)
    # TorchScript exporter, opsets 13-16: the biased variance as mean((x - mean)^2).
    centered = b.op("Sub", x, b.reduce_mean(x, [-1]))
    var = b.reduce_mean(b.op("Pow", centered, b.const(2.0)), [-1])
    std = b.op("Sqrt", b.op("Add", var, b.const(LN_EPS)))
    return b.op("Add", b.op("Mul", b.op("Div", centered, std), gamma), beta)


def _attention(b: GraphBuilder, cfg: TinyViTConfig, w: dict, pre: str, x: str) -> str:
    q, k_t, v = _project_qkv(b, cfg, w, pre, x)
    if cfg.scale == "sqrt_qk":
        # SDPA exports split 1/sqrt(D) as D**-0.25 on Q and on K^T before the MatMul.
        root = b.const(cfg.head_dim ** -0.25)
        scores = b.op("MatMul", b.op("Mul", q, root), b.op("Mul", k_t, root))
    elif cfg.scale == "mul_scores":
        scores = b.op("Mul", b.op("MatMul", q, k_t), b.const(cfg.head_dim ** -0.5))
    else:
        scores = b.op("Div", b.op("MatMul", q, k_t), b.const(math.sqrt(cfg.head_dim)))
    out = b.op("MatMul", b.op("Softmax", scores, axis=-1), v)
    out = b.op("Transpose", out, perm=[0, 2, 1, 3])
    out = b.op("Reshape", out, b.const([0, cfg.tokens, cfg.dim], _I64))
    return _linear(b, w, pre + "attn.proj", out)


def _project_qkv(b: GraphBuilder, cfg: TinyViTConfig, w: dict, pre: str, x: str) -> tuple:
    """Q [B,H,N,D], K^T [B,H,D,N], V [B,H,N,D] the timm (packed) or Hugging Face (separate) way.

    packed: Gather(0/1/2) on the [3,B,H,N,D] tensor (indexing, torchvision and older timm);
    packed_split: Split + Squeeze (`qkv.unbind(0)`, what current timm exports with TorchScript).
    """
    n, h, d = cfg.tokens, cfg.heads, cfg.head_dim
    if cfg.qkv != "separate":
        qkv = b.op("Reshape", _linear(b, w, pre + "attn.qkv", x), b.const([0, n, 3, h, d], _I64))
        qkv = b.op("Transpose", qkv, perm=[2, 0, 3, 1, 4])
        if cfg.qkv == "packed":
            q, k, v = (b.op("Gather", qkv, b.const(j, _I64), axis=0) for j in range(3))
        else:  # Split and Squeeze take their sizes/axes as inputs from opset 13
            parts = b.op_multi("Split", qkv, b.const([1, 1, 1], _I64), outputs=3, axis=0)
            q, k, v = (b.op("Squeeze", part, b.const([0], _I64)) for part in parts)
        return q, b.op("Transpose", k, perm=[0, 1, 3, 2]), v
    heads = []
    for j, role in enumerate("qkv"):
        name, cols = pre + f"attn.{role}", slice(j * cfg.dim, (j + 1) * cfg.dim)
        part = {f"{name}.weight": w[pre + "attn.qkv.weight"][:, cols],
                f"{name}.bias": w[pre + "attn.qkv.bias"][cols]}
        y = b.op("Reshape", _linear(b, part, name, x), b.const([0, n, h, d], _I64))
        # K goes straight to [B,H,D,N]: the exporter's peephole pass fuses the two transposes.
        heads.append(b.op("Transpose", y, perm=[0, 2, 3, 1] if role == "k" else [0, 2, 1, 3]))
    return tuple(heads)


def _mlp(b: GraphBuilder, cfg: TinyViTConfig, w: dict, pre: str, x: str) -> str:
    return _linear(b, w, pre + "mlp.fc2", _activation(b, cfg, _linear(b, w, pre + "mlp.fc1", x)))


def _activation(b: GraphBuilder, cfg: TinyViTConfig, x: str) -> str:
    if cfg.activation == "relu":
        return b.op("Relu", x)
    if cfg.activation == "gelu_erf":
        erf = b.op("Erf", b.op("Div", x, b.const(math.sqrt(2.0))))
        return b.op("Mul", b.op("Mul", x, b.op("Add", erf, b.const(1.0))), b.const(0.5))
    # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
    cubic = b.op("Mul", b.op("Pow", x, b.const(3.0)), b.const(0.044715))
    inner = b.op("Mul", b.op("Add", x, cubic), b.const(math.sqrt(2.0 / math.pi)))
    tanh = b.op("Tanh", inner)
    return b.op("Mul", b.op("Mul", x, b.op("Add", tanh, b.const(1.0))), b.const(0.5))
