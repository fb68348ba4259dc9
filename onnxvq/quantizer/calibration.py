"""The calibration stage of `quantize`: the calibration data, one ONNX Runtime pass over it,
each activation site's quantizer, and the weight scales the weight methods search."""

from __future__ import annotations

import logging
import os
import time

import onnx

from onnxvq.calibrate import batches, make_observer
from onnxvq.calibrate.budget import calibration_batch, exact_batches, fixed_batch
from onnxvq.calibrate.collect import collect
from onnxvq.calibrate.fq import FqCalibration
from onnxvq.calibrate.preprocess import Preprocess
from onnxvq.calibrate.searched import SEARCH_METHODS, base_method, refine
from onnxvq.calibrate.spec import DataSpec
from onnxvq.calibrate.weights import MomentCollector
from onnxvq.core.config import QuantConfig
from onnxvq.core.errors import UsageError
from onnxvq.core.params import ActivationQParams, FqParams, QuantPlan
from onnxvq.quantizer.conv import resolve_shared
from onnxvq.quantizer.weights import optimize_weights

log = logging.getLogger(__name__)


def is_trajectory(calib) -> bool:
    """Whether `calib` is a denoiser's DDIM trajectory (its module is imported only then)."""
    if calib is None or isinstance(calib, DataSpec | str | os.PathLike):
        return False
    from onnxvq.calibrate.denoiser import TrajectoryCalibration

    return isinstance(calib, TrajectoryCalibration)


def calibration_spec(calib, cfg: QuantConfig, preprocess: Preprocess | None) -> DataSpec:
    """The calibration DataSpec: `calib` with the config's sample count, batch size and seed."""
    if calib is not None and not isinstance(calib, DataSpec | str | os.PathLike):
        raise UsageError(f"calibration data must be a DataSpec, a path or None, got "
                         f"{type(calib).__name__} {calib!r:.40}")
    spec = DataSpec.coerce(calib, preprocess=preprocess)
    for field, value in (("samples", cfg.calib_size), ("batch_size", cfg.batch_size),
                         ("seed", cfg.seed)):
        given = getattr(spec, field)
        if given is not None and given != value and not (field == "seed" and given == 0):
            raise UsageError(f"the DataSpec's {field}={given} contradicts the QuantConfig "
                             f"({value}); set it in the QuantConfig")
    return spec.with_(samples=cfg.calib_size, batch_size=cfg.batch_size, seed=cfg.seed)


def calibrate(model: onnx.ModelProto, the_plan: QuantPlan, calib, cfg: QuantConfig,
              preprocess: Preprocess | None, progress, fq: FqCalibration | None = None,
              structure=None, overrides: dict[str, tuple[float, int]] | None = None,
              moments: MomentCollector | None = None,
              ) -> tuple[dict[str, ActivationQParams], dict, FqParams]:
    """One ORT run over the calibration data (two with PTS: its per-channel shifts need the
    range first); returns qparams per activation site, a summary, and the PTS/LIS parameters.
    `overrides` (tensor -> (scale, zero point)) replace the calibrated ones: the sites behind a
    reparameterisation, whose per-tensor quantizer is the per-channel one folded. `moments`
    gathers the second moments of its tensors in the same run (for the weight quantizers)."""
    t0 = time.perf_counter()
    sites = [s.tensor for s in the_plan.activations]
    observed = sites + (fq.tensors if fq else [])
    make = _observer_factory(cfg, fq, set(sites))
    make = moments.wrap(make) if moments is not None else make
    reduced = {t for t in observed if getattr(make(t), "range_only", False)}  # never held
    batch = calibration_batch(model, cfg.batch_size, [t for t in observed if t not in reduced],
                              sorted(reduced))
    fixed = fixed_batch(model)
    count, feeds, record = calibration_feeds(model, calib, cfg, preprocess, batch, fixed)
    observers = collect(model, observed, feeds(progress), make)
    qparams = _site_qparams(the_plan, observers, cfg)
    overridden = {t: _fixed(s, z, cfg, qparams.get(t)) for t, (s, z) in (overrides or {}).items()}
    qparams.update((t, q) for t, q in overridden.items() if t in qparams)
    resolve_shared(qparams, the_plan.shared)
    searched = {}
    if cfg.fisher and cfg.method not in SEARCH_METHODS:
        log.warning("fisher did nothing: it weights the search methods' metrics, not %s",
                    cfg.method)
    if cfg.method in SEARCH_METHODS:  # block-wise refinement of the base ranges (searched.py)
        qparams, searched["weight_scales"], searched["twin"], searched["search"] = refine(
            model, structure, the_plan, cfg, feeds(), count, model.graph.input[0].name,
            observers, qparams)
        qparams.update((t, q) for t, q in overridden.items() if t in qparams)  # keep the folds
    fq_params = (fq.finish(model, observers, {**overridden, **qparams}, feeds())
                 if fq is not None else FqParams())
    info = {**record(), "method": cfg.method, "batch_size": batch,
            "seconds": round(time.perf_counter() - t0, 3), **searched}
    return qparams, info, fq_params


def weight_scales(graph, the_plan: QuantPlan, cfg: QuantConfig, calib_info: dict,
                   moments: MomentCollector) -> dict:
    """Weight scales for quantize-weights: a search method's, then `weight_method`'s (which
    also rewrites the weights to their dequantized values, quantizer/weights.py)."""
    searched = calib_info.pop("weight_scales", {})
    if cfg.weight_method == "max" and not cfg.bias_correction:
        return searched
    return {**searched, **optimize_weights(graph, the_plan, cfg, moments.stats)}


def calibration_feeds(model: onnx.ModelProto, calib, cfg: QuantConfig,
                       preprocess: Preprocess | None, batch: int, fixed):
    """(sample count, feeds(report) -> batches, record() -> summary) for `calib`: a data spec,
    path or None (batches clamped to a fixed batch dim and the memory budget, budget.py), or a
    denoiser's DDIM trajectory (held in memory, so PTS can take a second pass)."""
    if is_trajectory(calib):
        kept = calib.feeds(model, batch)
        return len(calib), lambda report=None: iter(kept), calib.record
    spec = calib if isinstance(calib, DataSpec) else calibration_spec(calib, cfg, preprocess)
    spec = spec.fitted(model)
    inp = model.graph.input[0]
    prep = spec.resolve_preprocess()
    source = spec.open(model)
    if spec.source is None:
        log.warning("NO CALIBRATION DATA: calibrating on %d samples of Gaussian noise. Accuracy "
                    "will be lower than with real images; pass --data DIR.", len(source))

    def feeds(report=None):
        return exact_batches(batches(source, batch, inp.name, report), fixed)

    return len(source), feeds, lambda: spec.record(prep, len(source))


def _observer_factory(cfg: QuantConfig, fq: FqCalibration | None, sites: set[str]):
    opts = {"ema": {"momentum": cfg.momentum}, "percentile": {"tail": cfg.percentile}}

    def make(name: str):
        return make_observer(base_method(cfg.method), name, **opts.get(cfg.method, {}))

    return fq.observer_factory(make, sites) if fq is not None else make


def _site_qparams(the_plan: QuantPlan, observers: dict, cfg: QuantConfig,
                  ) -> dict[str, ActivationQParams]:
    """Each activation site's quantizer from its observer (symmetric int8 for target trt)."""
    signed, qparams = cfg.symmetric, {}
    for site in the_plan.activations:
        scale, zp = observers[site.tensor].qparams(site.bits, symmetric=signed, signed=signed)
        lo, hi = observers[site.tensor].range()
        qparams[site.tensor] = ActivationQParams(float(scale), int(zp),
                                                 "int8" if signed else "uint8", site.bits,
                                                 (float(lo), float(hi)), site.role)
    return qparams


def _fixed(scale: float, zp: int, cfg: QuantConfig,
           site: ActivationQParams | None) -> ActivationQParams:
    """A given per-tensor quantizer; its range is the one its codes span."""
    from onnxvq.calibrate.quant import qrange

    qmin, qmax = qrange(cfg.a_bits, cfg.symmetric)
    return ActivationQParams(float(scale), int(zp), "int8" if cfg.symmetric else "uint8",
                             cfg.a_bits, ((qmin - zp) * scale, (qmax - zp) * scale),
                             site.role if site else "linear")
