"""Validation after a pass: structural (checker, shape inference) and numeric (ORT vs the input)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxvq.core import external
from onnxvq.core.errors import ValidationError
from onnxvq.core.graph import MAX_IR_VERSION, compatible_ir


def check_graph(model: onnx.ModelProto, *, where: str = "", shapes: bool = True) -> None:
    """onnx checker, plus strict shape inference unless `shapes=False`; raises ValidationError
    naming `where`. (Shape inference serialises the whole model: on ViT-B it costs ~2 s a call.)
    A model over 2 GB is checked as its skeleton (`core.external`: large weights as typed
    inputs), which checks every node, type and shape without serialising or copying the weights;
    their byte counts are checked against their shapes."""
    try:
        if external.is_large(model):
            _check_weights(model)
            model = external.skeleton(model, max_ir=MAX_IR_VERSION)
        else:
            model = compatible_ir(model)
        onnx.checker.check_model(model)
        if shapes:
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:
        msg = str(exc).strip().splitlines()
        raise ValidationError(f"invalid graph {where}: {msg[0] if msg else exc!r}") from exc


# types whose raw data is not itemsize * volume bytes (packed sub-byte values, strings)
_PACKED = {getattr(onnx.TensorProto, n) for n in ("STRING", "INT4", "UINT4", "FLOAT4E2M1",
                                                   "INT2", "UINT2") if hasattr(onnx.TensorProto, n)}


def _check_weights(model: onnx.ModelProto) -> None:
    """Each raw initializer holds as many bytes as its type and shape say (what the checker's
    tensor check would catch on the weights the skeleton leaves out)."""
    for init in model.graph.initializer:
        if init.HasField("raw_data") and init.data_type not in _PACKED:
            # ByteSize counts the whole tensor message; the raw bytes are most of it
            need = external.tensor_bytes(init)
            if not need <= init.ByteSize() <= need + 1024 + len(init.name) + 16 * len(init.dims):
                raise ValidationError(f"initializer {init.name!r}: {init.ByteSize()} bytes "
                                      f"for shape {list(init.dims)}")


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
