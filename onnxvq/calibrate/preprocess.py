"""Image preprocessing for calibration and evaluation: resize, center crop, normalise (Pillow only).

The resize scales the shorter side to `size` keeping the aspect ratio (the longer side truncated to
an int, as torchvision does), the crop takes the centre `crop` x `crop` square (offsets rounded),
and pixels become `(rgb / 255 - mean) / std`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, fields, replace
from typing import Literal

import numpy as np
from PIL import Image

from onnxvq.core.errors import UsageError

_TIMM_MEAN = (0.485, 0.456, 0.406)
_TIMM_STD = (0.229, 0.224, 0.225)
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CROP_PCT = {"imagenet": 0.9}  # resize = floor(crop / crop_pct)
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


@dataclass(frozen=True)
class Preprocess:
    size: int = 224
    crop: int = 224
    mean: tuple[float, float, float] = _TIMM_MEAN
    std: tuple[float, float, float] = _TIMM_STD
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    interpolation: Literal["bilinear", "bicubic"] = "bicubic"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        problems = _type_problems(self)
        if problems:
            raise UsageError("invalid preprocessing: " + "; ".join(problems))
        for name in ("mean", "std"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if not 0 < self.crop <= self.size:
            problems.append(f"crop {self.crop} must be in 1..size ({self.size})")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append("mean and std need 3 values each, std > 0")
        if self.layout not in ("NCHW", "NHWC"):
            problems.append(f"layout must be NCHW or NHWC, got {self.layout!r}")
        if self.interpolation not in _RESAMPLE:
            problems.append(f"interpolation must be one of {sorted(_RESAMPLE)}")
        if problems:
            raise UsageError("invalid preprocessing: " + "; ".join(problems))

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        c = self.crop
        return (3, c, c) if self.layout == "NCHW" else (c, c, 3)

    def __call__(self, image: Image.Image) -> np.ndarray:
        image = image.convert("RGB")
        w, h = image.size
        short, long_ = (w, h) if w <= h else (h, w)
        new_long = int(self.size * long_ / short)
        new_w, new_h = (self.size, new_long) if w <= h else (new_long, self.size)
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), _RESAMPLE[self.interpolation])
        left, top = int(round((new_w - self.crop) / 2.0)), int(round((new_h - self.crop) / 2.0))
        image = image.crop((left, top, left + self.crop, top + self.crop))
        x = np.asarray(image, dtype=np.float32) / np.float32(255.0)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x, dtype=self.dtype)


def _type_problems(p: Preprocess) -> list[str]:
    out = [f"{name} must be a positive integer, got {getattr(p, name)!r}"
           for name in ("size", "crop") if isinstance(getattr(p, name), bool)
           or not isinstance(getattr(p, name), int)]
    for name in ("mean", "std"):
        v = getattr(p, name)
        if not isinstance(v, tuple | list) or not all(
                isinstance(x, int | float) and not isinstance(x, bool) for x in v):
            out.append(f"{name} must be 3 numbers, got {v!r}")
    out += [f"{name} must be a string, got {getattr(p, name)!r}"
            for name in ("layout", "interpolation", "dtype")
            if not isinstance(getattr(p, name), str)]
    return out


PRESETS: dict[str, Preprocess] = {
    "imagenet": Preprocess(size=248, crop=224, interpolation="bicubic"),  # 248 = 224 / 0.9
    "imagenet-hf": Preprocess(size=224, crop=224, mean=(0.5,) * 3, std=(0.5,) * 3,
                              interpolation="bilinear"),
    "cifar10": Preprocess(size=32, crop=32, mean=_CIFAR_MEAN, std=(0.2470, 0.2435, 0.2616),
                          interpolation="bilinear"),
    "cifar10-vit": Preprocess(size=32, crop=32, mean=_CIFAR_MEAN, std=(0.2023, 0.1994, 0.2010),
                              interpolation="bilinear"),
}


def resolve_preprocess(preset: str = "imagenet", size: int | None = None,
                       mean: tuple[float, ...] | None = None,
                       std: tuple[float, ...] | None = None) -> Preprocess:
    """A preset with explicit overrides; `size` sets the crop and the resize becomes
    `floor(size / crop_pct)` as timm does (imagenet: crop_pct 0.9, 224 -> 248, 384 -> 426)."""
    try:
        base = PRESETS[preset]
    except KeyError:
        raise UsageError(
            f"unknown preprocessing preset '{preset}' (known: {', '.join(PRESETS)})"
        ) from None
    changes: dict = {}
    if size is not None:
        changes["crop"] = int(size)
        changes["size"] = math.floor(size / _CROP_PCT.get(preset, 1.0))
    if mean is not None:
        changes["mean"] = tuple(float(v) for v in mean)
    if std is not None:
        changes["std"] = tuple(float(v) for v in std)
    return replace(base, **changes)


def load_preprocess_config(path: str | os.PathLike) -> Preprocess:
    """A Preprocess from a JSON object of its fields, plus an optional "preset" as the base."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: cannot read preprocessing config ({exc})") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path}: preprocessing config must be a JSON object")
    preset = data.pop("preset", "imagenet")
    if not isinstance(preset, str):
        raise UsageError(f"{path}: preset must be a string, got {preset!r}")
    base = resolve_preprocess(preset)
    known = {f.name for f in fields(Preprocess)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"{path}: unknown preprocessing fields {unknown}")
    for key in ("mean", "std"):
        if key in data and isinstance(data[key], list):
            data[key] = tuple(data[key])
    try:
        return replace(base, **data)
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None
