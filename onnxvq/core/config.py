"""Quantization settings: one frozen dataclass shared by the CLI, the Python API and the sidecar."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from onnxvq.core.errors import OnnxvqError

METHODS = ("minmax", "ema", "percentile", "omse")
TARGETS = ("ort", "trt")


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how.

    target "ort": uint8 asymmetric activations (ORT's int8 kernels take them); "trt": int8
    symmetric, zero point 0 everywhere, as TensorRT requires. Weights are always int8 symmetric per
    output channel with scale max|w|/(2^(b-1)-1). Bit widths below 8 keep 8-bit containers with
    2^b-level scales (values past the calibrated range saturate at the container's edge).
    """

    method: Literal["minmax", "ema", "percentile", "omse"] = "minmax"
    target: Literal["ort", "trt"] = "ort"
    w_bits: int = 8
    a_bits: int = 8
    attn_bits: int | None = None  # attention MatMul inputs; None: a_bits, or 4 with --lis
    momentum: float = 0.01  # ema
    percentile: float = 1e-5  # tail mass clipped on each side
    skip: tuple[str, ...] = ()  # fnmatch patterns on node names kept float
    quantize_patch_embed: bool = True
    quantize_head: bool = True
    quantize_attention: bool = True  # the Q·Kᵀ and A·V MatMuls
    pts: bool = False
    lis: bool = False
    calib_size: int = 256
    batch_size: int = 16
    seed: int = 0
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise OnnxvqError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.target not in TARGETS:
            raise OnnxvqError(f"unknown target {self.target!r}; choose one of {', '.join(TARGETS)}")
        for name in ("w_bits", "a_bits"):
            if not 2 <= getattr(self, name) <= 8:
                raise OnnxvqError(f"{name.replace('_', '-')} must be between 2 and 8")
        if self.attn_bits is not None and not 2 <= self.attn_bits <= 8:
            raise OnnxvqError("attn-bits must be between 2 and 8")
        if self.calib_size < 1 or self.batch_size < 1:
            raise OnnxvqError("calib-size and batch-size must be positive")

    @property
    def symmetric(self) -> bool:
        return self.target == "trt"

    @property
    def attention_bits(self) -> int:
        if self.attn_bits is not None:
            return self.attn_bits
        return 4 if self.lis else self.a_bits

    def with_(self, **changes) -> QuantConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skip"] = list(self.skip)
        d["attention_bits"] = self.attention_bits
        d.pop("extra")
        return d
