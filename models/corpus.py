"""The real-export test corpus: which models, how they are exported, where the files live.

Entries are randomly initialised models from timm, Hugging Face and torchvision, each exported by
the TorchScript exporter at opsets 13 and 17 and by the dynamo exporter at its default opset. The
expected structure counts below are literals so that tests read them without torch;
`tests/models/test_corpus.py` checks them against the torch modules (`export.introspect_counts`).

Files: `corpus_dir()/<name>.<exporter>.onnx` and a manifest `<name>.<exporter>.json` (versions,
export seconds, torch-vs-ORT difference, op histogram). A model counts as exported only when both
exist; both are written atomically, the manifest last.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from onnxvq.models.architecture import (
    ArchitectureCounts,
    CnnCounts,
    CorpusEntry,
    CorpusError,
    DenoiserCounts,
)

log = logging.getLogger("onnxvq.models.export")

EXPORTERS = ("torchscript13", "torchscript17", "dynamo")


class ExportUnavailable(CorpusError):
    """This (model, exporter) pair is known not to export; the message says why."""


def _counts(blocks: int, attentions: int, layernorms: int, mlps: int, residual_adds: int,
            softmax: int, linears: int) -> ArchitectureCounts:
    return ArchitectureCounts(blocks, attentions, layernorms, mlps, residual_adds, softmax, linears)


# Counted from the torch modules (blocks, attention modules, nn.LayerNorm, MLP modules, two
# residual Adds per block, one Softmax per attention, nn.Linear plus torchvision's packed
# in_proj). Swin adds the patch-embed norm, 3 patch-merging norms and 3 merging Linears.
ENTRIES: dict[str, CorpusEntry] = {
    e.name: e
    for e in (
        CorpusEntry("deit_tiny_patch16_224", "timm", 224, _counts(12, 12, 25, 12, 24, 12, 49)),
        CorpusEntry("vit_small_patch16_224", "timm", 224, _counts(12, 12, 25, 12, 24, 12, 49)),
        CorpusEntry("swin_tiny_patch4_window7_224", "timm", 224,
                    _counts(12, 12, 29, 12, 24, 12, 52)),
        CorpusEntry("hf_vit_tiny_eager", "huggingface", 32, _counts(4, 4, 9, 4, 8, 4, 25),
                    (("attn_implementation", "eager"),)),
        CorpusEntry("hf_vit_tiny_sdpa", "huggingface", 32, _counts(4, 4, 9, 4, 8, 4, 25),
                    (("attn_implementation", "sdpa"),)),
        CorpusEntry("tv_vit_b_16", "torchvision", 224, _counts(12, 12, 25, 12, 24, 12, 49)),
    )
}

# (name, exporter) pairs that do not export with the pinned torch, and why.
UNAVAILABLE: dict[tuple[str, str], str] = {
    ("hf_vit_tiny_sdpa", "torchscript13"): (
        "UnsupportedOperatorError: Exporting the operator 'aten::scaled_dot_product_attention' "
        "to ONNX opset version 13 is not supported. Support for this operator was added in "
        "version 14 (hf_vit_tiny_eager covers opset 13)"
    ),
    # nn.MultiheadAttention calls F.scaled_dot_product_attention inside
    # F.multi_head_attention_forward, so even its slow path needs opset 14.
    ("tv_vit_b_16", "torchscript13"): (
        "UnsupportedOperatorError: Exporting the operator 'aten::scaled_dot_product_attention' "
        "to ONNX opset version 13 is not supported. Support for this operator was added in "
        "version 14, try exporting with this version"
    ),
}


# --- CNNs (issue 14: Sparsebit's homework models) ------------------------------------------
# torchvision classifiers, random weights; BatchNorm statistics are set by a train-mode pass over
# seeded noise (export.py) so that folding them changes every weight. Exported by TorchScript
# (opset 17, which folds BN itself) and dynamo (which keeps every BatchNormalization node).
# Pools count the pooling nodes (MobileNetV2 pools functionally, VGG's adaptive 7×7 pool of a
# 7×7 map exports as a pool too); residual Adds are ResNet's BasicBlocks and MobileNetV2's
# stride-1 equal-width inverted residuals.
CNN_EXPORTERS = ("torchscript17", "dynamo")
CNN_ENTRIES: dict[str, CorpusEntry] = {
    e.name: e
    for e in (
        CorpusEntry("tv_resnet18", "torchvision", 224, CnnCounts(20, 0, 20, 8, 2, 1),
                    (("arch", "resnet18"),)),
        CorpusEntry("tv_mobilenet_v2", "torchvision", 224, CnnCounts(52, 17, 52, 10, 1, 1),
                    (("arch", "mobilenet_v2"),)),
        CorpusEntry("tv_vgg16_bn", "torchvision", 224, CnnCounts(13, 0, 13, 0, 6, 3),
                    (("arch", "vgg16_bn"),)),
    )
}


# --- Diffusion denoisers (issue 14: Q-Diffusion, DiT) ---------------------------------------
# diffusers models, tiny configs, random weights (models/export_denoiser.py): a UNet2DModel
# (16², 3 channels, blocks of 32/64 channels, attention in the low-resolution blocks, skip
# Concats in the decoder) and a class-conditional DiTTransformer2DModel (adaLN-Zero, 8², 4
# channels, patch 2, 2 blocks, 10 classes, learned variance).
DENOISER_EXPORTERS = ("torchscript17", "dynamo")
DENOISER_ENTRIES: dict[str, CorpusEntry] = {
    e.name: e
    for e in (
        CorpusEntry("diffusers_unet2d_tiny", "diffusers", 16, DenoiserCounts(3, None, 0),
                    (("arch", "unet2d"),)),
        CorpusEntry("diffusers_dit_tiny", "diffusers", 8, DenoiserCounts(4, 10, 2),
                    (("arch", "dit"),)),
    )
}


def entry(name: str) -> CorpusEntry:
    found = ENTRIES.get(name) or CNN_ENTRIES.get(name) or DENOISER_ENTRIES.get(name)
    if found is None:
        known = ", ".join([*ENTRIES, *CNN_ENTRIES, *DENOISER_ENTRIES])
        raise CorpusError(f"unknown corpus model {name!r}; known: {known}")
    return found


def corpus_dir() -> Path:
    """`$ONNXVQ_CORPUS_DIR`, else `.corpus` at the repository root (git-ignored)."""
    env = os.environ.get("ONNXVQ_CORPUS_DIR")
    return Path(env) if env else _repo_root() / ".corpus"


def export_path(name: str, exporter: str) -> Path:
    return corpus_dir() / f"{name}.{exporter}.onnx"


def manifest_path(name: str, exporter: str) -> Path:
    return corpus_dir() / f"{name}.{exporter}.json"


def read_manifest(name: str, exporter: str) -> dict | None:
    path = manifest_path(name, exporter)
    if not path.exists() or not export_path(name, exporter).exists():
        return None
    return json.loads(path.read_text())


def ensure_export(name: str, exporter: str, *, force: bool = False) -> Path:
    """The exported model's path, exporting it first when missing (needs the [export] extra)."""
    entry(name)
    if exporter not in EXPORTERS:
        raise CorpusError(f"unknown exporter {exporter!r}; known: {', '.join(EXPORTERS)}")
    if (name, exporter) in UNAVAILABLE:
        raise ExportUnavailable(f"{name} with {exporter}: {UNAVAILABLE[name, exporter]}")
    if not force and read_manifest(name, exporter) is not None:
        return export_path(name, exporter)
    if entry(name).source == "diffusers":
        from onnxvq.models.export_denoiser import export_denoiser

        export_denoiser(entry(name), exporter, export_path(name, exporter))
        return export_path(name, exporter)
    from onnxvq.models import export  # torch is imported only when something must be exported

    export.export_entry(entry(name), exporter, export_path(name, exporter))
    return export_path(name, exporter)


def _repo_root() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").exists():
            return parent
    return Path.cwd()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m onnxvq.models.export",
        description="Export the test corpus (needs the [export] extra: torch, timm, transformers).")
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(ENTRIES))
    parser.add_argument("--all", action="store_true", help="every corpus model")
    parser.add_argument("--exporter", action="append", choices=EXPORTERS,
                        help="repeatable; default: all exporters")
    parser.add_argument("--force", action="store_true", help="re-export even when cached")
    args = parser.parse_args(argv)
    if not args.all and not args.names:
        parser.error("give model names or --all")
    # onnxscript logs every optimizer step at INFO; only onnxvq's progress is wanted.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("onnxvq").setLevel(logging.INFO)
    failures = 0
    for name in ENTRIES if args.all else args.names:
        for exporter in args.exporter or EXPORTERS:
            try:
                log.info("ready: %s", ensure_export(name, exporter, force=args.force))
            except CorpusError as exc:
                failures += 1
                log.error("%s", exc)
    return 1 if failures else 0
