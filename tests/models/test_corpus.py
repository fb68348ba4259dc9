"""The real-export corpus: every entry exports, loads in ORT and computes what torch computes."""

from __future__ import annotations

import functools
import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxvq.core.runtime import make_session
from onnxvq.models.corpus import (
    ENTRIES,
    EXPORTERS,
    UNAVAILABLE,
    CorpusError,
    ExportUnavailable,
    corpus_dir,
    ensure_export,
    read_manifest,
)

PAIRS = [(name, exporter) for name in ENTRIES for exporter in EXPORTERS]
_HAVE_TORCH = all(importlib.util.find_spec(m) for m in ("torch", "timm", "transformers"))


def test_corpus_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("ONNXVQ_CORPUS_DIR", str(tmp_path))
    assert corpus_dir() == tmp_path
    monkeypatch.delenv("ONNXVQ_CORPUS_DIR")
    assert corpus_dir().name == ".corpus" and (corpus_dir().parent / "pyproject.toml").exists()


def test_unknown_names_and_unavailable_pairs_are_refused(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.setenv("ONNXVQ_CORPUS_DIR", str(tmp_path))
    with pytest.raises(CorpusError, match="unknown corpus model"):
        ensure_export("resnet50", "dynamo")
    with pytest.raises(CorpusError, match="unknown exporter"):
        ensure_export("deit_tiny_patch16_224", "tflite")
    (name, exporter), reason = next(iter(UNAVAILABLE.items()))
    with pytest.raises(ExportUnavailable, match="opset version 13"):
        ensure_export(name, exporter)
    assert "scaled_dot_product_attention" in reason and not list(tmp_path.iterdir())


@pytest.mark.corpus
@pytest.mark.skipif(not _HAVE_TORCH, reason="needs torch, timm and transformers ([export] extra)")
@pytest.mark.parametrize("name", list(ENTRIES))
def test_counts_table_matches_the_torch_modules(name: str) -> None:
    import torch

    from onnxvq.models.export import build_module, introspect_counts

    torch.manual_seed(0)
    assert introspect_counts(build_module(ENTRIES[name])) == ENTRIES[name].counts


@functools.lru_cache(maxsize=2)
def _reference(name: str, exporter: str):
    from onnxvq.models.export import reference_module

    return reference_module(ENTRIES[name], exporter)


@pytest.mark.corpus
@pytest.mark.slow
@pytest.mark.parametrize(("name", "exporter"), PAIRS, ids=[f"{n}-{e}" for n, e in PAIRS])
def test_export_runs_in_ort_like_torch(corpus_model, name: str, exporter: str) -> None:
    import torch

    path = corpus_model(name, exporter)
    manifest = read_manifest(name, exporter)
    assert manifest["max_abs_diff"] <= 1e-4 and manifest["logits_std"] > 1e-3
    model = onnx.load(str(path), load_external_data=False)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    # Batch 1: neither the traced batch (2) nor the one the export was checked at (3).
    image = ENTRIES[name].image
    x = torch.randn(1, 3, image, image, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        # Only opset 13 changes the module (timm attention off SDPA); the cache keys on that.
        kind = "torchscript13" if exporter == "torchscript13" else "torchscript17"
        expected = _reference(name, kind)(x).numpy()
    got = make_session(path).run(["logits"], {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


@pytest.mark.corpus
@pytest.mark.parametrize(("name", "exporter"), PAIRS, ids=[f"{n}-{e}" for n, e in PAIRS])
def test_export_holds_the_expected_structure(corpus_model, name: str, exporter: str) -> None:
    """One Softmax per attention; LayerNormalization fused from opset 17, decomposed below."""
    model = onnx.load(str(corpus_model(name, exporter)), load_external_data=False)
    ops = Counter(n.op_type for n in model.graph.node)
    counts = ENTRIES[name].counts
    assert ops["Softmax"] == counts.softmax
    if exporter == "torchscript13":
        assert ops["LayerNormalization"] == 0 and ops["Sqrt"] >= counts.layernorms
    else:
        assert ops["LayerNormalization"] == counts.layernorms


@pytest.mark.corpus
def test_ensure_export_reuses_the_cache(corpus_model) -> None:
    path = corpus_model("hf_vit_tiny_eager", "torchscript17")
    stamp = path.stat().st_mtime_ns
    assert ensure_export("hf_vit_tiny_eager", "torchscript17") == path
    assert path.stat().st_mtime_ns == stamp


@pytest.mark.corpus
@pytest.mark.skipif(not _HAVE_TORCH, reason="needs torch, timm and transformers ([export] extra)")
@pytest.mark.parametrize(
    "exporter", ["torchscript17", pytest.param("dynamo", marks=pytest.mark.slow)]
)
def test_exports_are_deterministic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                   exporter: str) -> None:
    monkeypatch.setenv("ONNXVQ_CORPUS_DIR", str(tmp_path))
    first = ensure_export("hf_vit_tiny_eager", exporter).read_bytes()
    second = ensure_export("hf_vit_tiny_eager", exporter, force=True).read_bytes()
    assert first == second
    assert read_manifest("hf_vit_tiny_eager", exporter)["max_abs_diff"] < 1e-5
