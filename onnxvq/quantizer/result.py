"""`QuantResult`: what one quantize run produced, and how it is written (model + JSON sidecar)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from onnxvq.core.config import QuantConfig
from onnxvq.core.graph import save_model
from onnxvq.core.params import ActivationQParams, FqParams, QuantPlan, WeightQParams
from onnxvq.core.pipeline import PassResult, PipelineReport
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

    @property
    def refusals(self) -> list[dict]:
        """Every (pass, node, reason) a pass of either stage refused."""
        stages = [*(self.canonicalization.passes if self.canonicalization else ()), *self.passes]
        return [{"pass": r.pass_id, "node": n, "reason": why}
                for r in stages for n, why in r.refused]

    def sidecar(self) -> dict:
        return {
            "onnxvq": _version(),
            "config": self.config.to_dict(),
            "calibration": self.calibration,
            "structure": self.structure.summary(),
            "passes": [{"pass": r.pass_id, "applied": r.applied, **r.counts} for r in self.passes],
            "skipped": [{"node": n, "reason": r} for n, r in self.plan.skipped],
            "refused": self.refusals,
            "activations": {k: v.to_dict() for k, v in self.activation_qparams.items()},
            "weights": {k: v.to_dict() for k, v in self.weight_qparams.items()},
            "fq": self.fq_params.to_dict(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model and its JSON sidecar (`<name>.json` beside it), each atomically."""
        path = save_model(self.model, path)
        side = path.with_suffix(".json")
        tmp = side.with_name(f".{side.name}.tmp")
        tmp.write_text(json.dumps(self.sidecar(), indent=1))
        os.replace(tmp, side)
        return path


def _version() -> str:
    from onnxvq import __version__

    return __version__
