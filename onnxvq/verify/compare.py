"""Compare an FP32 model with its quantized version through Polygraphy.

Both models run through `verify.comparator` (Polygraphy's `OnnxrtRunner` on onnxvq sessions, so the
custom ops are registered; `Comparator.run`; `SimpleCompareFunc` for atol/rtol). On top of
Polygraphy's verdict this module measures what quantization error is usually judged by: SQNR and
cosine similarity per output.

The inputs and the FP32 outputs can be saved in Polygraphy's JSON formats, so the same check reruns
without onnxvq:

    polygraphy run q.onnx --onnxrt --load-inputs i.json --load-outputs o.json --atol 0.5 --rtol 0
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import onnx

from onnxvq.calibrate.preprocess import Preprocess
from onnxvq.calibrate.spec import DataSpec, preprocess_to_dict, recorded_preprocess
from onnxvq.core.errors import UsageError
from onnxvq.core.files import check_side_file
from onnxvq.core.graph import load_model
from onnxvq.core.metrics import error_stats, sqnr_db
from onnxvq.verify import comparator

__all__ = ["Comparison", "OutputStats", "as_model", "compare", "error_stats", "input_feeds",
           "sqnr_db"]

log = logging.getLogger(__name__)

FP32_RUNNER = "onnxrt-fp32"
QUANT_RUNNER = "onnxrt-quant"
DEFAULT_SAMPLES = 8
DEFAULT_BATCH = 8


@dataclass(frozen=True)
class OutputStats:
    name: str
    max_abs: float
    mean_abs: float
    median_abs: float
    max_rel: float
    mean_rel: float
    median_rel: float
    cosine: float
    sqnr_db: float  # 10 log10(sum ref^2 / sum err^2); inf when identical
    tolerance_ok: bool | None  # Polygraphy's atol/rtol verdict; None when not checked
    sqnr_ok: bool | None

    @property
    def passed(self) -> bool:
        return self.tolerance_ok is not False and self.sqnr_ok is not False


@dataclass
class Comparison:
    outputs: list[OutputStats]
    samples: int
    iterations: int
    source: str
    atol: float | None
    rtol: float | None
    sqnr_min: float | None
    saved: dict[str, str] = field(default_factory=dict)
    preprocess: dict | None = None  # the image preprocessing used (None: noise or tensors)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "samples": self.samples, "iterations": self.iterations,
                "source": self.source, "atol": self.atol, "rtol": self.rtol,
                "sqnr_min": self.sqnr_min, "saved": self.saved, "preprocess": self.preprocess,
                "outputs": [{**vars(o), "passed": o.passed} for o in self.outputs]}


def as_model(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if hasattr(model, "model") and isinstance(model.model, onnx.ModelProto):  # a QuantResult
        return model.model
    if not isinstance(model, str | os.PathLike):
        raise UsageError(f"a model path or onnx.ModelProto is expected, got "
                         f"{type(model).__name__}")
    return load_model(model)


def input_feeds(model: onnx.ModelProto, data: DataSpec | str | os.PathLike | None, *,
                preprocess: Preprocess | None = None, samples: int | None = 8,
                batch_size: int = 8, seed: int = 0,
                progress: Callable[[int], None] | None = None) -> Iterator[dict]:
    """Feed dicts for `model` from `data` (a DataSpec or a path; None: seeded N(0, 1) noise)."""
    spec = DataSpec.coerce(data, preprocess=preprocess, seed=seed or None)
    return spec.feeds(model, samples=samples, batch_size=batch_size, progress=progress)


def compare(fp32: str | os.PathLike | onnx.ModelProto, quant: str | os.PathLike | onnx.ModelProto,
            data: DataSpec | str | os.PathLike | None = None, *,
            preprocess: Preprocess | None = None, samples: int | None = None,
            batch_size: int | None = None, seed: int | None = None,
            atol: float | None = None, rtol: float | None = None, sqnr_min: float | None = 20.0,
            save_inputs: str | os.PathLike | None = None,
            save_outputs: str | os.PathLike | None = None) -> Comparison:
    """Run both models on the same inputs and judge every output: Polygraphy's atol/rtol check
    when `atol` or `rtol` is given, and SQNR >= `sqnr_min` dB when that is not None. `data` is a
    DataSpec or a path (default 8 samples); without preprocessing settings it uses the ones
    recorded in `quant`'s sidecar."""
    spec = DataSpec.coerce(data, preprocess=preprocess, samples=samples, batch_size=batch_size,
                           seed=seed)
    for flag, path in (("--save-inputs", save_inputs), ("--save-outputs", save_outputs)):
        if path is not None:  # before any work, and never over a model this reads
            check_side_file(path, flag, (fp32, quant))
    ref_model, q_model = as_model(fp32), as_model(quant)
    recorded = recorded_preprocess(quant)
    prep = spec.resolve_preprocess(recorded)
    feeds = list(spec.feeds(ref_model, samples=DEFAULT_SAMPLES, batch_size=DEFAULT_BATCH,
                            recorded=recorded))
    runners = [comparator.ort_runner(ref_model, FP32_RUNNER),
               comparator.ort_runner(q_model, QUANT_RUNNER)]
    results = comparator.run(runners, feeds, save_inputs=save_inputs)
    tolerance = atol is not None or rtol is not None
    verdicts = (comparator.tolerance_verdicts(results, FP32_RUNNER, QUANT_RUNNER, atol=atol,
                                              rtol=rtol) if tolerance else {})
    if save_outputs is not None:
        comparator.save_outputs(results, FP32_RUNNER, save_outputs)
    outputs = [_output_stats(name, results, verdicts.get(name) if tolerance else None, sqnr_min)
               for name in comparator.output_names(results, FP32_RUNNER)]
    saved = {k: str(v) for k, v in (("inputs", save_inputs), ("outputs", save_outputs)) if v}
    return Comparison(outputs, sum(len(next(iter(f.values()))) for f in feeds), len(feeds),
                      spec.describe(), atol, rtol, sqnr_min, saved,
                      preprocess=preprocess_to_dict(prep) if spec.source else None)


def _output_stats(name: str, results, tolerance_ok: bool | None,
                  sqnr_min: float | None) -> OutputStats:
    ref = comparator.concatenated(results, FP32_RUNNER, name)
    if not all(name in it for it in results[QUANT_RUNNER]):
        raise UsageError(f"the quantized model has no output named '{name}'")
    out = comparator.concatenated(results, QUANT_RUNNER, name)
    if ref.shape != out.shape:
        raise UsageError(f"output '{name}': shapes differ ({ref.shape} vs {out.shape})")
    stats = error_stats(ref, out)
    sqnr_ok = None if sqnr_min is None else bool(stats["sqnr_db"] >= sqnr_min)
    return OutputStats(name, **stats, tolerance_ok=tolerance_ok, sqnr_ok=sqnr_ok)
