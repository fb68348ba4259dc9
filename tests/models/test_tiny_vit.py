"""The numpy-built tiny ViT: valid, runnable, deterministic, and equal to a numpy forward pass."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import replace

import numpy as np
import onnx
import pytest

from onnxvq.core.errors import OnnxvqError
from onnxvq.core.runtime import make_session
from onnxvq.models.tiny_vit import LN_EPS, TinyViTConfig, build_tiny_vit, describe, make_weights

_STRUCTURAL = list(itertools.product(
    ("pre", "post"), ("fused", "decomposed"), ("gelu_erf", "gelu_tanh", "relu"),
    ("packed", "packed_split", "separate"), ("mul_scores", "div_scores", "sqrt_qk"),
))


def _config(index: int) -> TinyViTConfig:
    norm, layernorm, activation, qkv, scale = _STRUCTURAL[index]
    # final_norm and cls_token cycle through their four combinations along the product.
    return TinyViTConfig(norm=norm, layernorm=layernorm, activation=activation, qkv=qkv,
                         scale=scale, final_norm=index % 2 == 0, cls_token=index % 4 < 2)


def _images(batch: int, cfg: TinyViTConfig | None = None, seed: int = 1) -> np.ndarray:
    cfg = cfg or TinyViTConfig()
    shape = (batch, cfg.channels, cfg.image, cfg.image)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _logits(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return make_session(model).run(["logits"], {"input": x})[0]


def _histogram(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def _weight_linears(model: onnx.ModelProto) -> int:
    weights = {t.name for t in model.graph.initializer}
    return sum(n.op_type in ("MatMul", "Gemm") and n.input[1] in weights for n in model.graph.node)


@pytest.mark.parametrize("index", range(len(_STRUCTURAL)), ids=lambda i: "-".join(_STRUCTURAL[i]))
def test_every_combination_checks_runs_and_counts(index: int) -> None:
    cfg = _config(index)
    model = build_tiny_vit(cfg)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version <= 10
    counts, hist = describe(cfg), _histogram(model)
    assert hist["Softmax"] == counts.softmax == cfg.depth
    assert _weight_linears(model) == counts.linears
    if cfg.layernorm == "fused":
        assert hist["LayerNormalization"] == counts.layernorms
    else:
        assert hist["Sqrt"] == counts.layernorms and "LayerNormalization" not in hist
    assert hist["Erf"] == (cfg.depth if cfg.activation == "gelu_erf" else 0)
    assert hist["Tanh"] == (cfg.depth if cfg.activation == "gelu_tanh" else 0)
    logits = _logits(model, _images(3, cfg))
    assert logits.shape == (3, cfg.classes) and np.isfinite(logits).all()


@pytest.mark.parametrize("opset", range(13, 22))
def test_every_opset_checks_and_runs(opset: int) -> None:
    layernorm = "fused" if opset >= 17 else "decomposed"
    cfg = TinyViTConfig(opset=opset, layernorm=layernorm, cls_token=False)
    model = build_tiny_vit(cfg)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == opset and model.ir_version <= 10
    reduce_means = [n for n in model.graph.node if n.op_type == "ReduceMean"]
    # opset 18 moved ReduceMean's axes from an attribute to a second input.
    assert all((len(n.input) == 2) == (opset >= 18) for n in reduce_means)
    assert _logits(model, _images(2, cfg)).shape == (2, cfg.classes)


def test_batch_dimension_is_symbolic() -> None:
    model = build_tiny_vit()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert model.graph.output[0].name == "logits"
    one, five = _logits(model, _images(1)), _logits(model, _images(5))
    np.testing.assert_allclose(one[0], five[0], atol=1e-5)


def test_deterministic_for_a_seed() -> None:
    cfg = TinyViTConfig(qkv="separate", layernorm="decomposed")
    first = build_tiny_vit(cfg).SerializeToString()
    assert build_tiny_vit(cfg).SerializeToString() == first
    assert build_tiny_vit(replace(cfg, seed=1)).SerializeToString() != first


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_equivalent_variants_give_the_same_logits(norm: str) -> None:
    base = TinyViTConfig(norm=norm)
    reference = _logits(build_tiny_vit(base), _images(4))
    for change in ({"layernorm": "decomposed"}, {"qkv": "separate"}, {"qkv": "packed_split"},
                   {"scale": "div_scores"}, {"scale": "sqrt_qk"}):
        logits = _logits(build_tiny_vit(replace(base, **change)), _images(4))
        np.testing.assert_allclose(logits, reference, atol=1e-5, err_msg=str(change))


def test_residual_stream_has_outlier_channels() -> None:
    """The first LayerNorm's input spreads over channels by >10x: what PTS is for."""
    model = build_tiny_vit()
    first_ln = next(n for n in model.graph.node if n.op_type == "LayerNormalization")
    model.graph.output.append(onnx.ValueInfoProto(name=first_ln.input[0]))
    embed = make_session(model).run([first_ln.input[0]], {"input": _images(4)})[0]
    ranges = np.abs(embed).max(axis=(0, 1))
    assert ranges.max() / np.median(ranges) > 10


def test_attention_is_not_uniform() -> None:
    model = build_tiny_vit()
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    model.graph.output.append(onnx.ValueInfoProto(name=softmax.output[0]))
    probs = make_session(model).run([softmax.output[0]], {"input": _images(2)})[0]
    assert probs.max(axis=-1).mean() > 3 / probs.shape[-1]


@pytest.mark.parametrize("cfg", [
    TinyViTConfig(),
    TinyViTConfig(norm="post", activation="gelu_tanh", qkv="separate", scale="sqrt_qk",
                  final_norm=False, cls_token=False, layernorm="decomposed", opset=13),
    TinyViTConfig(activation="relu", depth=3, heads=2, seed=7, opset=18, qkv="packed_split"),
], ids=["default", "post-tanh-nocls", "relu-depth3"])
def test_matches_an_independent_numpy_forward(cfg: TinyViTConfig) -> None:
    x = _images(3, cfg)
    expected = _numpy_forward(cfg, make_weights(cfg), x.astype(np.float64))
    np.testing.assert_allclose(_logits(build_tiny_vit(cfg), x), expected, rtol=1e-4, atol=1e-4)


def test_invalid_configs_are_refused() -> None:
    with pytest.raises(OnnxvqError, match="opset >= 17"):
        TinyViTConfig(opset=16)
    with pytest.raises(OnnxvqError, match="activation"):
        TinyViTConfig(activation="swish")
    with pytest.raises(OnnxvqError, match="heads"):
        TinyViTConfig(dim=60, heads=8)


# ------------------------------------------------------------------ reference


def _numpy_forward(cfg: TinyViTConfig, w: dict, x: np.ndarray) -> np.ndarray:
    """A float64 ViT written from the equations, sharing nothing with the graph builder."""
    b, p, g = x.shape[0], cfg.patch, cfg.image // cfg.patch
    patches = x.reshape(b, cfg.channels, g, p, g, p).transpose(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(b, g * g, -1)
    tokens = patches @ w["patch_embed.weight"].reshape(cfg.dim, -1).T + w["patch_embed.bias"]
    if cfg.cls_token:
        tokens = np.concatenate([np.broadcast_to(w["cls_token"], (b, 1, cfg.dim)), tokens], 1)
    h = tokens + w["pos_embed"]
    for i in range(cfg.depth):
        pre = f"blocks.{i}."
        ln1 = lambda t, n=pre + "norm1": _ln(t, w, n)  # noqa: E731
        ln2 = lambda t, n=pre + "norm2": _ln(t, w, n)  # noqa: E731
        if cfg.norm == "pre":
            h = h + _np_attention(cfg, w, pre, ln1(h))
            h = h + _np_mlp(cfg, w, pre, ln2(h))
        else:
            h = ln1(h + _np_attention(cfg, w, pre, h))
            h = ln2(h + _np_mlp(cfg, w, pre, h))
    if cfg.final_norm:
        h = _ln(h, w, "norm")
    pooled = h[:, 0] if cfg.cls_token else h.mean(axis=1)
    return pooled @ w["head.weight"].T + w["head.bias"]


def _ln(t: np.ndarray, w: dict, name: str) -> np.ndarray:
    mean, var = t.mean(-1, keepdims=True), t.var(-1, keepdims=True)
    return (t - mean) / np.sqrt(var + LN_EPS) * w[f"{name}.weight"] + w[f"{name}.bias"]


def _np_attention(cfg: TinyViTConfig, w: dict, pre: str, t: np.ndarray) -> np.ndarray:
    b, n, _ = t.shape
    qkv = t @ w[pre + "attn.qkv.weight"] + w[pre + "attn.qkv.bias"]
    q, k, v = (qkv[..., j * cfg.dim:(j + 1) * cfg.dim]
               .reshape(b, n, cfg.heads, cfg.head_dim).transpose(0, 2, 1, 3) for j in range(3))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(cfg.head_dim)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = (probs @ v).transpose(0, 2, 1, 3).reshape(b, n, cfg.dim)
    return out @ w[pre + "attn.proj.weight"] + w[pre + "attn.proj.bias"]


def _np_mlp(cfg: TinyViTConfig, w: dict, pre: str, t: np.ndarray) -> np.ndarray:
    hid = t @ w[pre + "mlp.fc1.weight"] + w[pre + "mlp.fc1.bias"]
    if cfg.activation == "relu":
        hid = np.maximum(hid, 0)
    elif cfg.activation == "gelu_tanh":
        hid = 0.5 * hid * (1 + np.tanh(math.sqrt(2 / math.pi) * (hid + 0.044715 * hid**3)))
    else:
        erf = np.vectorize(math.erf)
        hid = 0.5 * hid * (1 + erf(hid / math.sqrt(2)))
    return hid @ w[pre + "mlp.fc2.weight"] + w[pre + "mlp.fc2.bias"]
