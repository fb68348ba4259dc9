"""Compare an FP32 model with its quantized version through Polygraphy.

Both models run in ONNX Runtime sessions from `core.runtime.make_session` (so onnxvq's custom ops
are registered), wrapped in Polygraphy's `OnnxrtRunner`; `Comparator.run` feeds them the same inputs
and `Comparator.compare_accuracy` applies the atol/rtol check (`SimpleCompareFunc`, formerly
`CompareFunc.simple`). On top of Polygraphy's verdict this
module measures what quantization error is usually judged by: SQNR and cosine similarity per output.

The inputs and the FP32 outputs can be saved in Polygraphy's JSON formats, so the same check reruns
without onnxvq:

    polygraphy run q.onnx --onnxrt --load-inputs i.json --load-outputs o.json --atol 0.5 --rtol 0
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxvq.calibrate import batches, open_source, resolve_preprocess
from onnxvq.calibrate.preprocess import Preprocess
from onnxvq.core.errors import OnnxvqError
from onnxvq.core.graph import load_model
from onnxvq.core.runtime import make_session, random_inputs

log = logging.getLogger(__name__)

FP32_RUNNER = "onnxrt-fp32"
QUANT_RUNNER = "onnxrt-quant"
_TINY = 1e-12


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

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "samples": self.samples, "iterations": self.iterations,
                "source": self.source, "atol": self.atol, "rtol": self.rtol,
                "sqnr_min": self.sqnr_min, "saved": self.saved,
                "outputs": [{**vars(o), "passed": o.passed} for o in self.outputs]}


def as_model(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else load_model(model)


def input_feeds(model: onnx.ModelProto, data: str | os.PathLike | None, *,
                preprocess: Preprocess | None = None, samples: int | None = 8,
                batch_size: int = 8, seed: int = 0,
                progress: Callable[[int], None] | None = None) -> Iterator[dict]:
    """Feed dicts for `model`: batches from an image folder or .npy/.npz (`data`), or, when `data`
    is None, `ceil(samples / batch_size)` batches of seeded N(0, 1) noise."""
    if data is None:
        sess = make_session(model)
        count = samples or batch_size
        for i in range(math.ceil(count / batch_size)):
            n = min(batch_size, count - i * batch_size)
            feeds = random_inputs(sess, batch=n, seed=seed + i)
            if progress is not None:
                progress(n)
            yield feeds
        return
    inp = model.graph.input[0]
    shape = [d.dim_value if d.HasField("dim_value") else "N"
             for d in inp.type.tensor_type.shape.dim]
    source = open_source(data, preprocess or resolve_preprocess("imagenet"), samples, shape)
    yield from batches(source, batch_size, inp.name, progress)


def error_stats(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """Absolute/relative error statistics, cosine similarity and SQNR of `out` against `ref`."""
    ref = np.asarray(ref, dtype=np.float64).ravel()
    out = np.asarray(out, dtype=np.float64).ravel()
    err = np.abs(out - ref)
    rel = err / np.maximum(np.abs(ref), _TINY)
    signal, noise = float(np.dot(ref, ref)), float(np.dot(err, err))
    norms = math.sqrt(signal) * math.sqrt(float(np.dot(out, out)))
    return {"max_abs": float(err.max()), "mean_abs": float(err.mean()),
            "median_abs": float(np.median(err)), "max_rel": float(rel.max()),
            "mean_rel": float(rel.mean()), "median_rel": float(np.median(rel)),
            "cosine": _clip(np.dot(ref, out) / norms) if norms > 0 else float(noise == 0),
            "sqnr_db": sqnr_db(signal, noise)}


def sqnr_db(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def compare(fp32: str | os.PathLike | onnx.ModelProto, quant: str | os.PathLike | onnx.ModelProto,
            data: str | os.PathLike | None = None, *, preprocess: Preprocess | None = None,
            samples: int | None = 8, batch_size: int = 8, seed: int = 0,
            atol: float | None = None, rtol: float | None = None, sqnr_min: float | None = 20.0,
            save_inputs: str | os.PathLike | None = None,
            save_outputs: str | os.PathLike | None = None) -> Comparison:
    """Run both models on the same inputs and judge every output: Polygraphy's atol/rtol check
    when `atol` or `rtol` is given, and SQNR >= `sqnr_min` dB when that is not None."""
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.comparator import Comparator, RunResults
    from polygraphy.logger import G_LOGGER

    ref_model, q_model = as_model(fp32), as_model(quant)
    feeds = list(input_feeds(ref_model, data, preprocess=preprocess, samples=samples,
                             batch_size=batch_size, seed=seed))
    runners = [OnnxrtRunner(make_session(ref_model), name=FP32_RUNNER),
               OnnxrtRunner(make_session(q_model), name=QUANT_RUNNER)]
    tolerance = atol is not None or rtol is not None
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):  # Polygraphy logs to stdout; the library must not
        try:
            results = Comparator.run(runners, data_loader=feeds,
                                     save_inputs_path=_path(save_inputs))
        except Exception as exc:  # Polygraphy raises PolygraphyException, ORT its own types
            raise OnnxvqError(f"running the models failed: {exc}") from exc
        verdicts = _tolerance_verdicts(results, atol, rtol) if tolerance else {}
        if save_outputs is not None:
            fp32_only = RunResults()
            fp32_only.append((FP32_RUNNER, results[FP32_RUNNER]))
            fp32_only.save(_path(save_outputs))
    outputs = [_output_stats(name, results, verdicts.get(name) if tolerance else None, sqnr_min)
               for name in results[FP32_RUNNER][0].keys()]
    saved = {k: str(v) for k, v in (("inputs", save_inputs), ("outputs", save_outputs)) if v}
    source = str(data) if data is not None else f"gaussian-noise(seed={seed})"
    return Comparison(outputs, sum(len(next(iter(f.values()))) for f in feeds), len(feeds),
                      source, atol, rtol, sqnr_min, saved)


def _tolerance_verdicts(results, atol: float | None, rtol: float | None) -> dict[str, bool]:
    from polygraphy.comparator import Comparator

    try:  # Polygraphy >= 0.53 names the class; CompareFunc.simple is its deprecated factory
        from polygraphy.comparator import SimpleCompareFunc as simple
    except ImportError:
        from polygraphy.comparator import CompareFunc

        simple = CompareFunc.simple
    func = simple(atol=atol if atol is not None else 0.0,
                              rtol=rtol if rtol is not None else 0.0)
    accuracy = Comparator.compare_accuracy(results, compare_func=func)
    verdicts: dict[str, bool] = {}
    for per_iteration in accuracy[0][(FP32_RUNNER, QUANT_RUNNER)]:
        for name, ok in per_iteration.items():
            verdicts[name] = verdicts.get(name, True) and bool(ok)
    return verdicts


def _output_stats(name: str, results, tolerance_ok: bool | None,
                  sqnr_min: float | None) -> OutputStats:
    ref = np.concatenate([np.ravel(it[name]) for it in results[FP32_RUNNER]])
    if not all(name in it for it in results[QUANT_RUNNER]):
        raise OnnxvqError(f"the quantized model has no output named '{name}'")
    out = np.concatenate([np.ravel(it[name]) for it in results[QUANT_RUNNER]])
    if ref.shape != out.shape:
        raise OnnxvqError(f"output '{name}': shapes differ ({ref.shape} vs {out.shape})")
    stats = error_stats(ref, out)
    sqnr_ok = None if sqnr_min is None else bool(stats["sqnr_db"] >= sqnr_min)
    return OutputStats(name, **stats, tolerance_ok=tolerance_ok, sqnr_ok=sqnr_ok)


def _path(p: str | os.PathLike | None) -> str | None:
    if p is None:
        return None
    Path(p).parent.mkdir(parents=True, exist_ok=True)
    return str(p)


def _clip(cos: float) -> float:
    return float(min(1.0, max(-1.0, cos)))  # rounding can push |cos| a hair past 1
