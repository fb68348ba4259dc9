"""What the recogniser finds in a ViT graph, as plain data that later passes consume.

Everything refers to nodes and tensors by name, so a structure stays meaningful after the graph is
exported and re-imported (as the pipeline does between passes).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Literal

from onnxvq.recognise.cnn import CnnSummary
from onnxvq.recognise.dit import AdaLnSummary


@dataclass(frozen=True)
class Linear:
    node: str  # the MatMul/Gemm
    weight: str
    bias_add: str | None  # the Add that applies the bias, when it is a separate node
    output: str  # tensor after the bias
    in_features: int
    out_features: int


@dataclass(frozen=True)
class Activation:
    kind: Literal["gelu_erf", "gelu_tanh", "gelu_quick", "gelu", "relu", "silu", "hardswish",
                  "star_relu", "other"]
    nodes: tuple[str, ...]
    input: str
    output: str


@dataclass(frozen=True)
class Attention:
    softmax: str
    scores_matmul: str  # Q·Kᵀ
    context_matmul: str  # A·V
    scores: str  # tensor fed to the Softmax chain (after scale/bias)
    probs: str  # Softmax output
    q: str  # MatMul operands as they enter Q·Kᵀ and A·V
    k: str
    v: str
    scale: float
    qkv: Literal["packed", "separate"]
    projections: tuple[Linear, ...]  # one (packed) or three (q, k, v)
    out_proj: Linear | None
    additive_bias: bool  # bias or mask added before the Softmax (Swin)
    heads: int | None
    head_dim: int | None
    score_nodes: tuple[str, ...] = ()  # scale and bias nodes between Q·Kᵀ and the Softmax
    head_mixing: tuple[str, ...] = ()  # talking heads (CaiT): Linears over the head axis


@dataclass(frozen=True)
class Mlp:
    fc1: Linear
    activation: Activation
    fc2: Linear
    gate: str | None = None  # the gated MLP's act(x₁)·x₂ Mul (SwiGLU), quantized like a MatMul
    conv: str | None = None  # a depthwise Conv between fc1 and the activation (PVTv2)
    fc1_x: Linear | None = None  # the gate's own linear x₂ where fc1 is two (AIMv2's SwiGLU)


@dataclass(frozen=True)
class LayerNorm:
    node: str
    input: str
    output: str
    channels: int | None
    consumers: tuple[str, ...]


@dataclass(frozen=True)
class RmsNorm:
    """x·γ / √(mean(x²) + ε): an RMSNormalization node or its decomposition (norms.py)."""
    node: str  # the last node (the γ Mul)
    input: str
    output: str
    channels: int | None
    nodes: tuple[str, ...]  # every node of the decomposition


@dataclass(frozen=True)
class Residual:
    node: str
    skip: str  # the identity input
    branch: str  # the input that carries the attention/MLP result
    kind: Literal["attention", "mlp"]


@dataclass(frozen=True)
class Block:
    index: int
    attention: Attention
    mlp: Mlp | None
    norms: tuple[str, ...]
    residuals: tuple[Residual, ...]
    # res-post-norm: x + norm(branch(x)), the norm on each branch (SwinV2)
    placement: Literal["pre-norm", "post-norm", "res-post-norm", "none"]


@dataclass
class ViTStructure:
    blocks: list[Block] = field(default_factory=list)
    attentions: list[Attention] = field(default_factory=list)
    mlps: list[Mlp] = field(default_factory=list)
    layernorms: list[LayerNorm] = field(default_factory=list)
    rmsnorms: list[RmsNorm] = field(default_factory=list)
    residuals: list[Residual] = field(default_factory=list)
    patch_embed: list[str] = field(default_factory=list)
    head: list[Linear] = field(default_factory=list)
    other_softmax: list[str] = field(default_factory=list)
    unrecognised: Counter = field(default_factory=Counter)
    opset: int = 0
    cnn: CnnSummary | None = None  # set when no transformer block but Convs are found
    adaln: AdaLnSummary | None = None  # DiT's adaLN-Zero conditioning, when found (dit.py)

    @property
    def counts(self) -> dict[str, int]:
        return {
            "blocks": len(self.blocks),
            "attentions": len(self.attentions),
            "layernorms": len(self.layernorms),
            "mlps": len(self.mlps) - self.chained_mlps,
            "residual_adds": len(self.residuals),
            # reported where a model has them (AIMv2, the VLM encoders), as `cnn` and `adaln`
            **({"rmsnorms": len(self.rmsnorms)} if self.rmsnorms else {}),
        }

    @property
    def chained_mlps(self) -> int:
        """MLPs whose fc1 is another MLP's fc2: the later pairs of a deeper MLP (YOLOS' and
        DETR's 3-layer box and class heads, linear-act-linear-act-linear), found as one
        activation unit each but one MLP, as the torch module is."""
        fc2s = {m.fc2.node for m in self.mlps}
        return sum(m.fc1.node in fc2s for m in self.mlps)

    @property
    def is_vit(self) -> bool:
        return bool(self.blocks)

    @property
    def is_cnn(self) -> bool:
        return not self.blocks and self.cnn is not None

    def summary(self) -> dict:
        first = self.blocks[0] if self.blocks else None
        return {
            **self.counts,
            "heads": first.attention.heads if first else None,
            "head_dim": first.attention.head_dim if first else None,
            "dim": first.attention.projections[0].in_features if first else None,
            "attention": sorted({a.qkv for a in self.attentions}),
            "attention_bias": any(a.additive_bias for a in self.attentions),
            "placement": sorted({b.placement for b in self.blocks}),
            "activation": sorted({m.activation.kind for m in self.mlps}),
            "patch_embed": self.patch_embed,
            "head": [h.node for h in self.head],
            "other_softmax": len(self.other_softmax),
            "unrecognised": dict(sorted(self.unrecognised.items())),
            "opset": self.opset,
            **({"cnn": self.cnn.to_dict()} if self.is_cnn else {}),
            **({"adaln": self.adaln.to_dict()} if self.adaln is not None else {}),
        }

    def to_dict(self) -> dict:
        d = asdict(self)
        d["unrecognised"] = dict(self.unrecognised)
        if self.cnn is not None:
            d["cnn"] = self.cnn.to_dict()
        if self.adaln is not None:
            d["adaln"] = self.adaln.to_dict()
        d["counts"] = self.counts
        return d
