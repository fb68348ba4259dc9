"""Option definitions shared by every command, so each flag means the same thing everywhere.

Data flags (quantize, compare, eval, sensitivity, report): `--data` (image folder, .npy/.npz;
none: Gaussian noise), `--samples`, `--batch-size`, `--seed`, `--preset`, `--size`, `--mean`,
`--std`, `--preprocess-config`. Choices (`--method`, `--target`, `--preset`) are enums, checked
while parsing (exit code 2, as every usage error).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from onnxvq.calibrate.preprocess import PRESETS
from onnxvq.calibrate.spec import DataSpec
from onnxvq.core.config import METHODS, TARGETS

Method = Enum("Method", {m: m for m in METHODS}, type=str)
Target = Enum("Target", {t: t for t in TARGETS}, type=str)
Preset = Enum("Preset", {p.replace("-", "_"): p for p in PRESETS}, type=str)

_DATA = "Data flags"
Fp32 = Annotated[Path, typer.Argument(help="FP32 ONNX model.")]
Quant = Annotated[Path, typer.Argument(help="Quantized ONNX model (its .json sidecar beside it).")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout (logs and "
                                    "progress go to stderr).")]
Data = Annotated[Path | None, typer.Option(
    "--data", help="Image folder or .npy/.npz file/folder; none: Gaussian noise.",
    rich_help_panel=_DATA)]
Samples = Annotated[int | None, typer.Option(
    "--samples", help="Samples to use (evenly strided subset).", rich_help_panel=_DATA)]
BatchSize = Annotated[int, typer.Option(help="Samples per inference.", rich_help_panel=_DATA)]
Seed = Annotated[int, typer.Option(help="Seed of the noise inputs and of the subsample phase.",
                                   rich_help_panel=_DATA)]
PresetOpt = Annotated[Preset | None, typer.Option(
    "--preset", help="Preprocessing preset (default: the quantized model's recorded "
    "preprocessing, else imagenet).", rich_help_panel=_DATA)]
Size = Annotated[int | None, typer.Option(help="Override the input (crop) size.",
                                          rich_help_panel=_DATA)]
Mean = Annotated[tuple[float, float, float] | None, typer.Option(
    help="Override the mean (RGB).", rich_help_panel=_DATA)]
Std = Annotated[tuple[float, float, float] | None, typer.Option(
    help="Override the std (RGB).", rich_help_panel=_DATA)]
PreprocessConfig = Annotated[Path | None, typer.Option(
    help="JSON preprocessing config (Preprocess fields, optional \"preset\").",
    rich_help_panel=_DATA)]


def data_spec(data: Path | None, preset, size, mean, std, preprocess_config, samples: int | None,
              batch_size: int | None, seed: int) -> DataSpec:
    """The DataSpec of the data flags (validated: a bad value is a UsageError)."""
    return DataSpec(source=data, preset=preset.value if preset is not None else None, size=size,
                    mean=mean, std=std, preprocess_config=preprocess_config, samples=samples,
                    batch_size=batch_size, seed=seed)
