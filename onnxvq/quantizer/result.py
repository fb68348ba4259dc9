"""`QuantResult`: what one quantize run produced, and how it is written (model + JSON sidecar)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from onnxvq.calibrate.spec import DataSpec
from onnxvq.core.config import QuantConfig
from onnxvq.core.errors import UsageError
from onnxvq.core.files import check_writable, remove_stale_temps, same_file, temp_dir_beside
from onnxvq.core.graph import save_model
from onnxvq.core.params import ActivationQParams, FqParams, QuantPlan, WeightQParams
from onnxvq.core.pipeline import PassResult, PipelineReport
from onnxvq.core.version import __version__
from onnxvq.recognise.structure import ViTStructure


@dataclass
class QuantResult:
    model: onnx.ModelProto
    config: QuantConfig
    structure: ViTStructure
    plan: QuantPlan
    activation_qparams: dict[str, ActivationQParams]
    weight_qparams: dict[str, WeightQParams]
    passes: list[PassResult]
    calibration: dict = field(default_factory=dict)
    fq_params: FqParams = field(default_factory=FqParams)  # PTS shifts, softmax constants
    canonicalization: PipelineReport | None = None  # the canonical stage's passes and refusals
    canonical: onnx.ModelProto | None = field(default=None, repr=False)  # FP32, canonicalised
    data_spec: DataSpec | None = None  # the calibration data (source, preprocessing, seed)
    fidelity: dict = field(default_factory=dict)  # the fidelity gate's report (verify/gate.py)
    source_path: str | None = None  # the FP32 file quantized, which save() refuses to overwrite
    external_data: bool = False  # save() writes the weights to `<name>.data` (input over 2 GB)
    mixed_precision: dict = field(default_factory=dict)  # bits per Linear chosen (verify/mixed)

    @property
    def refusals(self) -> list[dict]:
        """Every (pass, node, reason) a pass of either stage refused."""
        stages = [*(self.canonicalization.passes if self.canonicalization else ()), *self.passes]
        return [{"pass": r.pass_id, "node": n, "reason": why}
                for r in stages for n, why in r.refused]

    def sidecar(self) -> dict:
        return {
            "onnxvq": __version__,
            "config": self.config.to_dict(),
            "calibration": self.calibration,
            "structure": self.structure.summary(),
            "passes": [{"pass": r.pass_id, "applied": r.applied, **r.counts} for r in self.passes],
            "skipped": [{"node": n, "reason": r} for n, r in self.plan.skipped],
            "refused": self.refusals,
            "activations": {k: v.to_dict() for k, v in self.activation_qparams.items()},
            "weights": {k: v.to_dict() for k, v in self.weight_qparams.items()},
            "fq": self.fq_params.to_dict(),
            "fidelity": self.fidelity,
            **({"mixed_precision": self.mixed_precision} if self.mixed_precision else {}),
        }

    def save(self, path: str | os.PathLike, *, source: str | os.PathLike | None = None) -> Path:
        """Write the model and its JSON sidecar (`<name>.json` beside it) as one pair: both (and
        the model's external `.data`, if any) are written in a temporary folder beside the target
        and moved into place together, the model last. `source` (default: the FP32 file this
        result was quantized from) may not be overwritten. Stale temporaries of killed runs are
        removed first."""
        path = check_output_path(path, source if source is not None else self.source_path)
        side = path.with_suffix(".json")
        remove_stale_temps(path)
        try:
            text = json.dumps(self.sidecar(), indent=1)
            with temp_dir_beside(path) as tmp:
                save_model(self.model, tmp / path.name,
                           external_data=True if self.external_data else None)
                (tmp / side.name).write_text(text, encoding="utf-8")
                data = tmp / f"{path.name}.data"
                if data.exists():
                    os.replace(data, path.with_name(data.name))
                os.replace(tmp / side.name, side)
                os.replace(tmp / path.name, path)
        except OSError as exc:
            raise UsageError(f"{path}: cannot write the model ({exc.strerror or exc})") from exc
        return path


def check_output_path(output: str | os.PathLike, source: str | os.PathLike | None = None,
                      ) -> Path:
    """Refuse an output that would destroy something or cannot be written: not `.onnx`, an
    existing folder, the input itself (any spelling, symlinks followed, hard links too), or a
    folder onnxvq cannot write to. Called before calibration so a bad `-o` costs nothing."""
    if not isinstance(output, str | os.PathLike):
        raise UsageError(f"output must be a path, got {type(output).__name__}")
    out = Path(output)
    if out.is_dir():
        raise UsageError(f"-o {out}: is a directory; give the output model's file name")
    if out.suffix.lower() != ".onnx":
        raise UsageError(f"-o {out}: the output must end in .onnx (its sidecar is written "
                         f"beside it as {out.with_suffix('.json').name})")
    if source is not None and same_file(out, Path(source)):
        raise UsageError(f"-o {out}: is the input model {source}; choose another output name")
    check_writable(out)
    return out


def model_bytes(path: str | os.PathLike) -> int:
    """Size of a model on disk, its external data files included."""
    path = Path(path)
    if not path.is_file():
        return 0
    total = path.stat().st_size
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # an unreadable file: count what is there
        return total
    locations = set()
    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            locations.update(e.value for e in init.external_data if e.key == "location")
    return total + sum((path.parent / loc).stat().st_size for loc in locations
                       if (path.parent / loc).is_file())
