"""The Python API the CLI is a thin layer over."""

from __future__ import annotations

import os
from dataclasses import dataclass

import onnx

from onnxvq.core.graph import load_model
from onnxvq.core.pipeline import PipelineReport
from onnxvq.passes.pipelines import canonicalize
from onnxvq.recognise.structure import ViTStructure


@dataclass
class Inspection:
    path: str
    structure: ViTStructure
    canonicalization: PipelineReport
    model: onnx.ModelProto  # the canonicalised model

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "summary": self.structure.summary(),
            "passes": [
                {"pass": r.pass_id, "applied": r.applied, "refused": len(r.refused), **r.counts}
                for r in self.canonicalization.passes
            ],
            "refusals": [{"pass": r.pass_id, "node": n, "reason": why}
                         for r in self.canonicalization.passes for n, why in r.refused],
            "canonicalization_max_abs_diff": (
                self.canonicalization.numeric.max_abs_diff
                if self.canonicalization.numeric else None
            ),
        }


def inspect(model: str | os.PathLike | onnx.ModelProto) -> Inspection:
    """Canonicalise a model and recognise its ViT structure."""
    from onnxvq.recognise.model import recognise_model

    path = "<memory>" if isinstance(model, onnx.ModelProto) else str(model)
    proto = model if isinstance(model, onnx.ModelProto) else load_model(model)
    canonical, report = canonicalize(proto)
    return Inspection(path, recognise_model(canonical), report, canonical)
