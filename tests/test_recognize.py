"""Structure recognition: exact counts on tiny ViTs, the corpus of real exports, the shared
models."""

from __future__ import annotations

import itertools

import pytest

from onnxvq.api import inspect
from onnxvq.models.corpus import ENTRIES, EXPORTERS, UNAVAILABLE
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit, describe

VARIANTS = [
    dict(norm=n, layernorm=ln, activation=a, qkv=q, scale=s)
    for n, ln, a, q, s in itertools.product(
        ["pre", "post"], ["fused", "decomposed"], ["gelu_erf", "gelu_tanh", "relu"],
        ["packed", "separate"], ["mul_scores", "sqrt_qk"])
]


def expected(counts) -> dict:
    return {"blocks": counts.blocks, "attentions": counts.attentions,
            "layernorms": counts.layernorms, "mlps": counts.mlps,
            "residual_adds": counts.residual_adds}


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: "-".join(o.values()))
def test_tiny_vit_counts(options):
    cfg = TinyViTConfig(depth=3, opset=13 if options["layernorm"] == "decomposed" else 17,
                        **options)
    result = inspect(build_tiny_vit(cfg))
    s = result.structure
    assert s.counts == expected(describe(cfg))
    assert {b.placement for b in s.blocks} == {f"{cfg.norm}-norm"}
    assert {a.qkv for a in s.attentions} == {"separate" if cfg.qkv == "separate" else "packed"}
    assert {m.activation.kind for m in s.mlps} == {cfg.activation}
    assert {(a.heads, a.head_dim) for a in s.attentions} == {(cfg.heads, cfg.dim // cfg.heads)}
    assert len(s.patch_embed) == 1 and len(s.head) == 1
    assert result.canonicalization.numeric.max_abs_diff <= 1e-4


def test_model_without_blocks_is_reported(no_block_model):
    model = no_block_model
    s = inspect(model).structure
    assert not s.is_vit and s.counts["blocks"] == 0
    assert s.unrecognised["Relu"] == 1


@pytest.mark.realdata
@pytest.mark.parametrize("name,counts,placement,activation", [
    ("vit_cifar10.onnx", dict(blocks=6, attentions=6, layernorms=13, mlps=6, residual_adds=12),
     "post-norm", "relu"),
    ("cct_cifar10.onnx", dict(blocks=4, attentions=4, layernorms=9, mlps=4, residual_adds=8),
     "pre-norm", "gelu_erf"),
])
def test_shared_models(shared_data, name, counts, placement, activation):
    result = inspect(shared_data / "models" / name)
    s = result.structure
    assert s.counts == counts
    assert {b.placement for b in s.blocks} == {placement}
    assert {m.activation.kind for m in s.mlps} == {activation}
    assert len(s.patch_embed) == 1 and len(s.head) == 1
    if name.startswith("cct"):
        assert len(s.other_softmax) == 1  # sequence pooling is not attention
    assert result.canonicalization.numeric.max_abs_diff <= 1e-4


CORPUS = [(n, e) for n in ENTRIES for e in EXPORTERS if (n, e) not in UNAVAILABLE]


@pytest.mark.corpus
@pytest.mark.slow
@pytest.mark.parametrize("name,exporter", CORPUS, ids=[f"{n}-{e}" for n, e in CORPUS])
def test_corpus_counts(corpus_model, name, exporter):
    result = inspect(corpus_model(name, exporter))
    s = result.structure
    assert s.counts == expected(ENTRIES[name].counts)
    assert {b.placement for b in s.blocks} == {"pre-norm"}
    source = ENTRIES[name].source
    assert {a.qkv for a in s.attentions} == {"separate" if source == "huggingface" else "packed"}
    if name.startswith("swin"):  # relative position bias (and shift masks) before every Softmax
        assert all(a.additive_bias for a in s.attentions)
    assert result.canonicalization.numeric.max_abs_diff <= 1e-4
