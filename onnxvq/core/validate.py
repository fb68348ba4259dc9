"""Validation after a pass: structural (checker, shape inference) and numeric (ORT vs the input)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxvq.core.errors import ValidationError
from onnxvq.core.graph import save_model

_INLINE_LIMIT = 2**31 - 1 - 2**20


def check_graph(model: onnx.ModelProto, *, where: str = "", shapes: bool = True) -> None:
    """onnx checker, plus strict shape inference unless `shapes=False`; raises ValidationError
    naming `where`. (Shape inference serialises the whole model: on ViT-B it costs ~2 s a call.)"""
    try:
        if model.ByteSize() < _INLINE_LIMIT:
            onnx.checker.check_model(model)
            if shapes:
                onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        else:
            with tempfile.TemporaryDirectory() as d:
                path = save_model(model, Path(d) / "model.onnx")
                onnx.checker.check_model(str(path))
                onnx.shape_inference.infer_shapes_path(str(path), check_type=True, strict_mode=True)
    except Exception as exc:
        msg = str(exc).strip().splitlines()
        raise ValidationError(f"invalid graph {where}: {msg[0] if msg else exc!r}") from exc


@dataclass
class NumericCheck:
    max_abs_diff: float
    atol: float
    outputs: dict[str, float]

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol


def numeric_check(
    reference: onnx.ModelProto,
    candidate: onnx.ModelProto,
    *,
    atol: float = 1e-4,
    batch: int = 2,
    seed: int = 0,
    where: str = "",
    raise_on_fail: bool = True,
) -> NumericCheck:
    """Run both models in ORT on the same random inputs and compare every output."""
    from onnxvq.core.runtime import make_session, random_inputs, run

    ref = make_session(reference)
    cand = make_session(candidate)
    feeds = random_inputs(ref, batch=batch, seed=seed)
    a, b = run(ref, feeds), run(cand, feeds)
    diffs = {}
    for name, va in a.items():
        if name not in b:
            raise ValidationError(f"{where}: output {name!r} disappeared")
        diffs[name] = float(np.max(np.abs(va.astype(np.float64) - b[name].astype(np.float64))))
    worst = max(diffs.values(), default=0.0)
    result = NumericCheck(worst, atol, diffs)
    if raise_on_fail and not (np.isfinite(worst) and result.ok):
        raise ValidationError(
            f"numeric check failed {where}: max |diff| {worst:.3g} > atol {atol:g}"
        )
    return result
