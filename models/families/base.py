"""A family's record (`Family`) and the size presets the source modules share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from onnxvq.models.corpus import corpus_dir
from onnxvq.models.family_modules import Counts


@dataclass(frozen=True)
class Family:
    name: str
    source: str  # "timm", "torchvision" or "huggingface"
    arch: str  # timm model name, torchvision builder, or HF config kind
    image: int
    counts: Counts
    kwargs: tuple[tuple[str, object], ...] = ()
    exporter: str = "torchscript17"  # "torchscriptNN" (opset NN, 13-18), "dynamo" or "dynamoNN"
    heads: int = 1  # classifier heads (distilled models have two)
    external: bool = False
    dynamic_hw: bool = False
    static_batch: int | None = None  # a fixed batch in the export (None: a symbolic "batch")
    patch_convs: int = 1  # Convs of the patch embedding (LeViT's stem is a chain of four)
    unsupported: str | None = None  # why recognition misses it (counts are torch's)
    # what `inspect` finds where recognition covers part of the family (`unsupported` says
    # what it misses); those families quantize through the gate as the supported ones do
    found: Counts | None = None
    tags: tuple[str, ...] = field(default=())
    atol: float = 1e-4  # the export check's max |ORT - torch| (outputs scaled up need more)

    @property
    def path(self) -> Path:
        return corpus_dir() / f"family_{self.name}.{self.exporter}.onnx"


def vit(depth: int, ln: int | None = None) -> Counts:
    """A plain ViT's counts at `depth` blocks (two LayerNorms a block and the final one)."""
    return Counts(depth, depth, ln if ln is not None else 2 * depth + 1, depth, 2 * depth)


HF_SMALL = (("hidden_size", 192), ("num_hidden_layers", 2), ("num_attention_heads", 3),
            ("intermediate_size", 768), ("patch_size", 16))
SWIN_SMALL = (("embed_dim", 48), ("depths", (1, 1, 2, 1)), ("num_heads", (3, 6, 12, 24)))
