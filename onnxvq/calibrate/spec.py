"""`DataSpec`: where a command's inputs come from and how they are preprocessed.

Every command (quantize, compare, eval, sensitivity, report) takes the same data flags and turns
them into one `DataSpec`: the source (an image folder, a .npy/.npz file or folder, or Gaussian
noise when there is none), the preprocessing (a preset with size/mean/std overrides, or a JSON
config), the number of samples, the batch size and the seed. `quantize` records the resolved
preprocessing in the sidecar; a command run on a quantized model starts from that record, so a
model calibrated at 256 px is compared at 256 px with no flags, and any explicit preprocessing flag
overrides the record.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import onnx

from onnxvq.calibrate.budget import clamp_to_fixed, exact_batches, fixed_batch
from onnxvq.calibrate.data import Source, batches, model_input, open_source
from onnxvq.calibrate.preprocess import (
    PRESETS,
    Preprocess,
    load_preprocess_config,
    resolve_preprocess,
)
from onnxvq.core.errors import UsageError

log = logging.getLogger(__name__)

DEFAULT_PRESET = "imagenet"


@dataclass(frozen=True)
class DataSpec:
    """Inputs of one command. `None` fields take the command's default (`samples`, `batch_size`)
    or the recorded / default preprocessing (`preset`, `size`, `mean`, `std`)."""

    source: str | None = None  # image folder, .npy/.npz file or folder; None: Gaussian noise
    preset: str | None = None
    size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    preprocess_config: str | None = None  # JSON file of Preprocess fields (+ "preset")
    preprocess: Preprocess | None = None  # a ready object (Python API); wins over the above
    samples: int | None = None
    batch_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("source", "preprocess_config"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, os.fspath(value))
        preset = getattr(self.preset, "value", self.preset)  # an Enum from the CLI
        object.__setattr__(self, "preset", preset)
        _check(self)

    @classmethod
    def coerce(cls, data: DataSpec | str | os.PathLike | None = None, **overrides) -> DataSpec:
        """`data` as a spec (a path becomes the source); `overrides` that are not None replace
        the spec's fields (the keyword arguments of the Python API functions)."""
        spec = data if isinstance(data, DataSpec) else cls(source=data)
        changes = {k: v for k, v in overrides.items() if v is not None}
        return replace(spec, **changes) if changes else spec

    def with_(self, **changes) -> DataSpec:
        return replace(self, **changes)

    @property
    def explicit_preprocessing(self) -> bool:
        return any(v is not None for v in (self.preset, self.size, self.mean, self.std,
                                           self.preprocess_config, self.preprocess))

    def resolve_preprocess(self, recorded: Preprocess | None = None) -> Preprocess:
        """The preprocessing to use: the explicit object, else the config file, else the preset,
        else `recorded` (a quantized model's sidecar), else imagenet; size/mean/std override."""
        if self.preprocess is not None:
            return self.preprocess
        if self.preprocess_config is not None:
            return _override(load_preprocess_config(self.preprocess_config), self)
        if self.preset is not None or recorded is None:
            return resolve_preprocess(self.preset or DEFAULT_PRESET, size=self.size,
                                      mean=self.mean, std=self.std)
        return _override(recorded, self)

    def fitted(self, model: onnx.ModelProto) -> DataSpec:
        """This spec with the preset's crop set to `model`'s fixed square image input when no
        size, preprocessing object or config was given: a ViT exported at 256 px calibrates at
        256 with the 224-px imagenet preset (the resize follows the preset's crop ratio), where
        before it failed on the shape."""
        if self.size is not None or self.preprocess is not None or \
                self.preprocess_config is not None:
            return self
        _, shape = model_input(model)
        if len(shape) != 4 or shape[1] not in (1, 3) or \
                not all(isinstance(d, int) for d in shape[2:]) or shape[2] != shape[3]:
            return self
        crop = resolve_preprocess(self.preset or DEFAULT_PRESET).crop
        if crop == shape[2]:
            return self
        log.warning("preprocessing: the model's input is fixed at %d px; cropping to %d (the "
                 "preset's is %d; --size overrides)", shape[2], shape[2], crop)
        return self.with_(size=shape[2])

    def open(self, model: onnx.ModelProto, *, samples: int | None = None,
             recorded: Preprocess | None = None) -> Source:
        """The source for `model`'s first input; `samples` is the command's default count.
        Without a recorded preprocessing, a preset's crop follows a fixed input (`fitted`)."""
        _, shape = model_input(model)
        count = self.samples if self.samples is not None else samples
        spec = self if recorded is not None else self.fitted(model)
        return open_source(self.source, spec.resolve_preprocess(recorded), count, shape,
                           seed=self.seed)

    def feeds(self, model: onnx.ModelProto, *, samples: int | None = None, batch_size: int = 16,
              recorded: Preprocess | None = None,
              progress: Callable[[int], None] | None = None) -> Iterator[dict]:
        """Feed dicts `{input: [B, ...]}` for `model` (defaults: `samples`, `batch_size`)."""
        name, _ = model_input(model)
        source = self.open(model, samples=samples, recorded=recorded)
        # A fixed batch dimension (dynamo exports at batch 1) overrides the batch size.
        batch = clamp_to_fixed(model, self.batch_size or batch_size, "this run")
        yield from exact_batches(batches(source, batch, name, progress), fixed_batch(model))

    def describe(self) -> str:
        return self.source if self.source is not None else f"gaussian-noise(seed={self.seed})"

    def record(self, preprocess: Preprocess, samples: int) -> dict:
        """What the sidecar keeps of this spec (enough to rerun with the same inputs)."""
        return {"source": self.source if self.source is not None else "gaussian-noise",
                "preprocess": preprocess_to_dict(preprocess), "samples": samples,
                "seed": self.seed}


def preprocess_to_dict(p: Preprocess) -> dict:
    d = asdict(p)
    d["mean"], d["std"] = list(p.mean), list(p.std)
    return d


def preprocess_from_dict(d: dict, where: str = "sidecar") -> Preprocess:
    known = {f.name for f in fields(Preprocess)}
    try:
        values = {k: (tuple(v) if k in ("mean", "std") else v) for k, v in d.items() if k in known}
        return Preprocess(**values)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{where}: recorded preprocessing {d} is invalid ({exc})") from exc


def sidecar_path(model: str | os.PathLike) -> Path:
    return Path(model).with_suffix(".json")


def recorded_preprocess(model) -> Preprocess | None:
    """The preprocessing `quantize` recorded for `model` (a path with `<model>.json` beside it, a
    QuantResult, or a sidecar dict), or None when there is no record."""
    if isinstance(model, dict):
        sidecar = model
    elif hasattr(model, "sidecar") and callable(model.sidecar):
        sidecar = model.sidecar()
    elif isinstance(model, str | os.PathLike) and sidecar_path(model).is_file():
        try:
            sidecar = json.loads(sidecar_path(model).read_text())
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable sidecar (%s); using the default preprocessing",
                        sidecar_path(model), exc)
            return None
    else:
        return None
    rec = (sidecar.get("calibration") or {}).get("preprocess") if isinstance(sidecar, dict) \
        else None
    if not isinstance(rec, dict):
        return None
    return preprocess_from_dict(rec, str(sidecar_path(model)) if not isinstance(
        model, dict) and not hasattr(model, "sidecar") else "sidecar")


def _override(base: Preprocess, spec: DataSpec) -> Preprocess:
    """`base` with the spec's size/mean/std; a new size keeps the base's resize/crop ratio."""
    changes: dict = {}
    if spec.size is not None:
        changes["crop"] = int(spec.size)
        changes["size"] = math.floor(spec.size * base.size / base.crop)
    if spec.mean is not None:
        changes["mean"] = tuple(float(v) for v in spec.mean)
    if spec.std is not None:
        changes["std"] = tuple(float(v) for v in spec.std)
    return replace(base, **changes) if changes else base


def _check(spec: DataSpec) -> None:
    problems = []
    if spec.preset is not None and spec.preset not in PRESETS:
        problems.append(f"unknown preset {spec.preset!r} (known: {', '.join(PRESETS)})")
    for name in ("samples", "batch_size", "size"):
        v = getattr(spec, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            problems.append(f"{name.replace('_', '-')} must be a positive integer, got {v!r}")
    if isinstance(spec.seed, bool) or not isinstance(spec.seed, int) or spec.seed < 0:
        problems.append(f"seed must be a non-negative integer, got {spec.seed!r}")
    if spec.preprocess is not None and not isinstance(spec.preprocess, Preprocess):
        problems.append(f"preprocess must be a Preprocess, got {type(spec.preprocess).__name__}")
    if problems:
        raise UsageError("invalid data settings: " + "; ".join(problems))
