"""Export the corpus models with torch (the [export] extra) and check them against torch.

    python -m onnxvq.models.export --all
    python -m onnxvq.models.export deit_tiny_patch16_224 --exporter dynamo

Every export is seeded (torch.manual_seed(0) before building the module), in eval mode, with a
symbolic batch dimension; the exported file is then run in onnxruntime at a batch size other
than the one used for tracing, and its largest difference from torch is recorded.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch

from onnxvq.core.graph import compatible_ir, save_model
from onnxvq.core.runtime import make_session
from onnxvq.models.architecture import ArchitectureCounts, CorpusEntry, CorpusError

log = logging.getLogger("onnxvq.models.export")  # not __main__ under python -m

TRACE_BATCH, CHECK_BATCH = 2, 3
MAX_ABS_DIFF = 1e-4
_BLOCKS = {"Block", "SwinTransformerBlock", "ViTLayer", "EncoderBlock"}
_ATTENTIONS = {"Attention", "WindowAttention", "ViTAttention", "MultiheadAttention"}
_MLPS = {"Mlp", "ViTMLP", "MLPBlock"}


class _Logits(torch.nn.Module):
    """Hugging Face models return a ModelOutput; exporters want a plain tensor."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def build_module(entry: CorpusEntry) -> torch.nn.Module:
    """The randomly initialised module, in eval mode; call after seeding torch."""
    if entry.source == "timm":
        import timm

        return timm.create_model(entry.name, pretrained=False).eval()
    if entry.source == "huggingface":
        from transformers import ViTConfig, ViTForImageClassification

        config = ViTConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                           intermediate_size=128, image_size=entry.image, patch_size=4,
                           num_labels=10, **dict(entry.options))
        return _Logits(ViTForImageClassification(config)).eval()
    if entry.source == "torchvision":
        import torchvision

        arch = dict(entry.options).get("arch", "vit_b_16")
        return torchvision.models.get_model(arch, weights=None).eval()
    raise CorpusError(f"{entry.name}: unknown source {entry.source!r}")


def _spread_constant_parameters(module: torch.nn.Module) -> None:
    """Give every constant-initialised parameter (LayerNorm 1/0, zero biases, torchvision's
    zero head and class token) a small random spread, as trained weights have.

    Left constant, the TorchScript exporter deduplicates equal initializers into chains of
    Identity nodes, which trained exports never contain, and a zero head hides any drift.
    """
    with torch.no_grad():
        for param in module.parameters():
            if param.numel() > 1 and bool((param == param.flatten()[0]).all()):
                param.add_(torch.randn_like(param) * 0.02)


def reference_module(entry: CorpusEntry, exporter: str) -> torch.nn.Module:
    """The exact module `exporter` exports for `entry`: seeded, eval mode, prepared."""
    torch.manual_seed(0)
    module = build_module(entry)
    _spread_constant_parameters(module)
    _set_batchnorm_statistics(module, entry)
    _prepare(module, exporter)
    return module


def _set_batchnorm_statistics(module: torch.nn.Module, entry: CorpusEntry) -> None:
    """Give BatchNorms the statistics of 8 seeded noise images (a train-mode pass with a
    cumulative average), as trained CNNs have: left at mean 0 / variance 1, folding them would
    barely change the weights and random-weight activations would grow layer after layer."""
    norms = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    module.train()
    with torch.no_grad():
        module(_images(entry, 8, seed=3))
    module.eval()


def introspect_counts(module: torch.nn.Module) -> ArchitectureCounts:
    """Structure counts read off the torch modules (what corpus.ENTRIES writes as literals)."""
    names = Counter(type(m).__name__ for m in module.modules())
    blocks = sum(names[n] for n in _BLOCKS)
    attentions = sum(names[n] for n in _ATTENTIONS)
    layernorms = sum(isinstance(m, torch.nn.LayerNorm) for m in module.modules())
    # nn.MultiheadAttention keeps its packed QKV projection as a bare parameter, not a Linear.
    linears = sum(isinstance(m, torch.nn.Linear) for m in module.modules())
    linears += names["MultiheadAttention"]
    return ArchitectureCounts(blocks=blocks, attentions=attentions, layernorms=layernorms,
                              mlps=sum(names[n] for n in _MLPS), residual_adds=2 * blocks,
                              softmax=attentions, linears=linears)


def export_entry(entry: CorpusEntry, exporter: str, path: Path) -> dict:
    """Export, verify against torch, write model then manifest atomically; returns the manifest."""
    module = reference_module(entry, exporter)
    timm_sdpa = any(getattr(m, "fused_attn", False) for m in module.modules())
    example = _images(entry, TRACE_BATCH, seed=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("exporting %s with %s", entry.name, exporter)
    start = time.perf_counter()
    try:
        model = _export(module, example, exporter, path.parent)
    except Exception as exc:  # the exporters raise anything from RuntimeError to their own types
        raise CorpusError(f"{entry.name} ({exporter}) did not export: "
                          f"{type(exc).__name__}: {exc}") from exc
    seconds = time.perf_counter() - start
    diff, scale = _compare(module, model, entry)
    if not diff <= MAX_ABS_DIFF:
        raise CorpusError(f"{entry.name} ({exporter}): ORT differs from torch by {diff:.3g}")
    save_model(model, path)
    manifest = _manifest(entry, exporter, model, path, seconds, diff, scale)
    manifest["timm_sdpa"] = timm_sdpa
    _write_json_atomic(path.with_suffix(".json"), manifest)
    log.info("%s %s: %.1f s, %.1f MB, max |ORT - torch| = %.2e", entry.name, exporter, seconds,
             manifest["onnx_bytes"] / 1e6, diff)
    return manifest


def _export(module: torch.nn.Module, example: torch.Tensor, exporter: str,
            workdir: Path) -> onnx.ModelProto:
    fd, tmp = tempfile.mkstemp(prefix=".export.", suffix=".onnx", dir=workdir)
    os.close(fd)
    names = {"input_names": ["input"], "output_names": ["logits"]}
    # No torch.no_grad() here: under it nn.MultiheadAttention takes its fused fast path
    # (aten::_native_multi_head_attention), which the TorchScript exporter cannot translate.
    try:
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=1024)
            torch.onnx.export(module, (example,), tmp, dynamo=True, external_data=False,
                              dynamic_shapes=({0: batch},), **names)
        else:
            torch.onnx.export(module, (example,), tmp, dynamo=False,
                              opset_version=_torchscript_opset(exporter),
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                              **names)
        return compatible_ir(onnx.load(tmp))
    finally:
        Path(tmp).unlink(missing_ok=True)


def _torchscript_opset(exporter: str) -> int:
    return int(exporter.removeprefix("torchscript"))


def _prepare(module: torch.nn.Module, exporter: str) -> None:
    """Switch timm attention off F.scaled_dot_product_attention below opset 14.

    The TorchScript exporter has no SDPA symbolic before opset 14; timm's explicit path
    (q * scale, q @ k^T, softmax) is what users export to opset 13 with.
    """
    if exporter != "dynamo" and _torchscript_opset(exporter) < 14:
        for m in module.modules():
            if getattr(m, "fused_attn", False):
                m.fused_attn = False


def _compare(module: torch.nn.Module, model: onnx.ModelProto,
             entry: CorpusEntry) -> tuple[float, float]:
    """Largest |ORT - torch| on logits at a batch size the trace never saw, and the logits' std."""
    images = _images(entry, CHECK_BATCH, seed=2)
    with torch.no_grad():
        expected = module(images).numpy()
    got = make_session(model).run(["logits"], {"input": images.numpy()})[0]
    if got.shape != expected.shape:
        raise CorpusError(f"{entry.name}: ORT logits {got.shape}, torch {expected.shape}")
    return float(np.abs(got - expected).max()), float(expected.std())


def _images(entry: CorpusEntry, batch: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, entry.image, entry.image, generator=generator)


def _manifest(entry: CorpusEntry, exporter: str, model: onnx.ModelProto, path: Path,
              seconds: float, diff: float, scale: float) -> dict:
    return {
        "name": entry.name, "exporter": exporter,
        "opset": next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx")),
        "ir_version": model.ir_version, "versions": _versions(),
        "export_seconds": round(seconds, 2), "onnx_bytes": path.stat().st_size,
        "max_abs_diff": diff, "logits_std": scale, "check_batch": CHECK_BATCH,
        "op_histogram": dict(sorted(Counter(n.op_type for n in model.graph.node).items())),
    }


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {}
    for dist in ("torch", "torchvision", "timm", "transformers", "onnxscript", "onnx"):
        try:
            found[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return found


def _write_json_atomic(path: Path, data: dict) -> None:
    from onnxvq.core.files import write_atomic

    write_atomic(path, json.dumps(data, indent=2), what="export record")


if __name__ == "__main__":  # the command lives with the catalogue it walks
    from onnxvq.models.corpus import main

    raise SystemExit(main())
