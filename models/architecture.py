"""What a ViT is made of, counted the way the structure recognizer counts it, and what a corpus
entry is (shared by the catalogue in `corpus` and the torch-side `export`)."""

from __future__ import annotations

from dataclasses import dataclass

from onnxvq.core.errors import OnnxvqError


@dataclass(frozen=True)
class ArchitectureCounts:
    """Expected counts of the structures a ViT graph holds.

    `linears` counts weight-carrying MatMul/Gemm (Q, K, V or packed QKV, projection, MLP, head,
    Swin patch merging); the two activation-by-activation MatMuls of attention are not linears.
    `residual_adds` counts the Adds of the residual stream only (not bias Adds, not position
    embeddings).
    """

    blocks: int
    attentions: int
    layernorms: int
    mlps: int
    residual_adds: int
    softmax: int
    linears: int


@dataclass(frozen=True)
class CnnCounts:
    """Expected counts in a CNN graph, as `onnxvq.recognise.cnn.CnnSummary.counts` reports them
    after canonicalisation (BatchNorms folded into their Convs, so `batchnorms` counts the torch
    modules, all of which fold)."""

    convs: int
    depthwise: int
    batchnorms: int
    residual_adds: int
    pools: int
    linears: int


@dataclass(frozen=True)
class DenoiserCounts:
    """A diffusion denoiser of the corpus: sample channels, class count (None: unconditional) and
    the transformer blocks the recogniser should find (DiT's; 0 for a UNet)."""

    channels: int
    classes: int | None
    blocks: int


class CorpusError(OnnxvqError):
    """An unknown corpus entry, or an export that failed or drifted from torch."""


@dataclass(frozen=True)
class CorpusEntry:
    name: str
    source: str  # "timm", "huggingface" or "torchvision"
    image: int
    counts: ArchitectureCounts | CnnCounts | DenoiserCounts
    options: tuple[tuple[str, str], ...] = ()  # e.g. (("attn_implementation", "sdpa"),)
