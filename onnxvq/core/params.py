"""The typed records quantization passes read and return: the plan, calibrated parameters.

They live in the core because passes may import only the core, the recogniser and the plugins:
`onnxvq.quantizer.placement` decides the plan and `onnxvq.calibrate` computes the parameters, but
both hand them to the passes as these plain frozen records. Each has `to_dict()` for the sidecar.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the core does not import the plugins at run time
    from onnxvq.plugins.reference import SoftmaxConstants

PTS_LEVELS = 4  # alpha in 0..3, the range IntLayerNorm accepts
WIDE_SCORE_LEVELS = 2**15 - 1  # int32 score codes per side when an int8 step would be >= ln 2


@dataclass(frozen=True)
class ActivationSite:
    tensor: str
    consumers: tuple[str, ...]  # node names whose input `tensor` is replaced by DQ(Q(tensor))
    role: str  # "linear", "conv", "scores", "probs", "values", "gate"
    bits: int


@dataclass(frozen=True)
class WeightSite:
    node: str
    op: str
    weight: str
    axis: int  # output-channel axis of the weight
    bits: int


@dataclass(frozen=True)
class QuantPlan:
    activations: tuple[ActivationSite, ...]
    weights: tuple[WeightSite, ...]
    skipped: tuple[tuple[str, str], ...]  # (node, reason)
    layernorms: tuple[str, ...] = ()  # LayerNormalization nodes replaced by IntLayerNorm (pts)
    softmaxes: tuple[str, ...] = ()  # attention Softmax nodes replaced by LogIntSoftmax (lis)
    shared: tuple[tuple[str, str], ...] = ()  # (site, source site): same qparams (CNN placement)


@dataclass(frozen=True)
class ActivationQParams:
    """The calibrated per-tensor quantizer of one activation site."""

    scale: float
    zero_point: int
    dtype: str  # "uint8" (asymmetric, target ort) or "int8" (symmetric, target trt)
    bits: int
    range: tuple[float, float]  # the observed (min, max) the scale was derived from
    role: str

    def to_dict(self) -> dict:
        return {**asdict(self), "range": list(self.range)}


@dataclass(frozen=True)
class TwinQParams:
    """PTQ4ViT twin-uniform quantizer of one activation, deployed as two Q/DQ branches summed.

    kind "softmax": x < threshold -> fine step `low_scale`, else coarse `high_scale`, both codes
    0..2^(b-1)-1, high_scale = 2^m * low_scale. kind "gelu": x < 0 -> `low_scale` (negative
    codes), x >= 0 -> `high_scale`. Zero points are per branch (uint8 for target ort).
    """

    tensor: str
    kind: str  # "softmax" or "gelu"
    bits: int
    low_scale: float
    high_scale: float
    threshold: float  # softmax: the split value; gelu: 0
    low_zero_point: int
    high_zero_point: int
    dtype: str
    consumer: str  # the MatMul that reads the tensor (A·V or fc2)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class WeightQParams:
    """What quantize-weights stored for one weighted node (per-output-channel scales)."""

    node: str
    weight: str
    axis: int
    bits: int
    scale: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"weight": self.weight, "axis": self.axis, "bits": self.bits,
                "scale": list(self.scale)}


@dataclass(frozen=True)
class LayerNormQuant:
    """PTS input quantizer and output quantizer of one LayerNormalization."""

    node: str
    input: str
    output: str
    scale: float  # layer-wise s; channel c uses 2^alpha_c * s1 with s1 = s / 8
    zero_point: int  # shared by all channels (0 for target trt)
    alpha: tuple[int, ...]
    out_scale: float
    out_zero_point: int
    out_dtype: str  # "uint8" or "int8"
    in_dtype: str = "uint8"  # PTS codes: "uint8" asymmetric, or "int8" symmetric (target trt)

    @property
    def s1(self) -> float:
        """The smallest PTS candidate scale, s / 2^(levels-1) (`calibrate.pts` candidates)."""
        return float(self.scale * 2.0 ** -(PTS_LEVELS - 1))

    def channel_scales(self):
        import numpy as np

        return (self.s1 * 2.0 ** np.asarray(self.alpha, np.float64)).astype(np.float32)

    def to_dict(self) -> dict:
        return {**asdict(self), "alpha": list(self.alpha), "s1": self.s1}


@dataclass(frozen=True)
class SoftmaxQuant:
    """Scores and values quantizers of one attention, with its LogIntSoftmax constants."""

    softmax: str
    scores: str
    values: str
    scores_scale: float  # symmetric, zero point 0
    scores_dtype: str  # "int8", or "int32" when the int8 step would be >= ln 2
    values_scale: float
    values_zero_point: int
    values_dtype: str
    constants: SoftmaxConstants

    def to_dict(self) -> dict:
        d = asdict(self)
        d["constants"] = self.constants.attributes()
        return d


@dataclass(frozen=True)
class FqParams:
    """PTS/LIS parameters per node, and the nodes calibration refused (node -> reason)."""

    layernorms: dict[str, LayerNormQuant] = field(default_factory=dict)
    softmaxes: dict[str, SoftmaxQuant] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # node -> why it keeps float

    def to_dict(self) -> dict:
        return {"layernorms": {k: v.to_dict() for k, v in self.layernorms.items()},
                "softmaxes": {k: v.to_dict() for k, v in self.softmaxes.items()},
                "refused": dict(self.refused)}
