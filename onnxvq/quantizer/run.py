"""`quantize`: canonicalise, recognise, plan, calibrate in one ONNX Runtime pass, rewrite.

The pass pipelines are declared in `onnxvq.passes.pipelines`; this module picks one per stage.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Literal

import onnx
import onnx_graphsurgeon as gs

from onnxvq.calibrate import batches, make_observer
from onnxvq.calibrate.budget import calibration_batch, exact_batches, fixed_batch, sample_shape
from onnxvq.calibrate.collect import collect
from onnxvq.calibrate.fq import FqCalibration
from onnxvq.calibrate.preprocess import Preprocess
from onnxvq.calibrate.searched import SEARCH_METHODS, base_method, refine
from onnxvq.calibrate.spec import DataSpec
from onnxvq.calibrate.weights import MomentCollector
from onnxvq.core.config import QuantConfig
from onnxvq.core.edit import name_nodes
from onnxvq.core.errors import CalibrationError, UsageError
from onnxvq.core.external import is_large, release_freed
from onnxvq.core.graph import adopt_weights, infer_shapes_into, load_model, to_graph
from onnxvq.core.params import ActivationQParams, FqParams, QuantPlan, WeightQParams
from onnxvq.core.pipeline import PassContext, PipelineReport, Validate
from onnxvq.passes.pipelines import canonical_pipeline, quantization_pipeline
from onnxvq.passes.prepare import prepare_input, restore_input, symbolic_image_dims
from onnxvq.quantizer.conv import resolve_shared
from onnxvq.quantizer.placement import plan
from onnxvq.quantizer.result import QuantResult
from onnxvq.quantizer.weights import moment_tensors, needs_moments, optimize_weights
from onnxvq.recognise.model import recognise
from onnxvq.recognise.structure import ViTStructure

log = logging.getLogger(__name__)


def prepare(proto: onnx.ModelProto, cfg: QuantConfig | None = None, *,
            validate: Validate | None = None, numeric: Literal["end", "each", "none"] = "none",
            sample_shape: Callable[[], tuple[int, ...]] = lambda: (3, 224, 224),
            ) -> tuple[gs.Graph, onnx.ModelProto, PipelineReport, ViTStructure]:
    """The canonical stage on one graph: import `proto` once, canonicalise it in place (exported
    and checked once), recognise the structure on the same graph. Returns the graph (the next
    stage edits it further), the canonical model, the stage's report and the structure.
    An IR version above what folding runs is lowered and symbolic image dims are fixed at
    `sample_shape()` for the import (`passes/prepare.py`); `proto` itself is left as it was."""
    undo = prepare_input(proto, sample_shape)
    try:
        graph = to_graph(proto)
        name_nodes(graph)  # the plan and the passes address nodes by (unique) name
        canonical, report = canonical_pipeline(cfg).run_graph(graph, like=proto,
                                                              validate=validate, numeric=numeric)
    finally:
        undo()
    if is_large(canonical):  # hold the weights once: the graph reads them from `canonical` now
        adopt_weights(graph, canonical)
    infer_shapes_into(graph, canonical)  # recognition reads head shapes off the graph
    return graph, canonical, report, recognise(graph)


def quantize(
    model: str | os.PathLike | onnx.ModelProto,
    calib: DataSpec | str | os.PathLike | None = None,
    config: QuantConfig | dict | None = None,
    *,
    preprocess: Preprocess | None = None,
    progress: Callable[[int], None] | None = None,
    validate: Validate | None = None,
    gate: Callable | None = None,
) -> QuantResult:
    """Quantize an FP32 ViT. `calib` is a `DataSpec`, an image folder, a .npy/.npz file or folder,
    or None for Gaussian noise (data-free; logged as a warning, expect lower accuracy). `config` is
    a QuantConfig or a dict of its fields; its calib_size/batch_size/seed set the sample count.

    One graph for the whole run: the model is imported once, canonicalised, recognised and planned
    on, then quantized in place; it is exported and checked once per stage (`validate="each"`, or
    `ONNXVQ_VALIDATE=each`, checks after every pass instead). `gate(result, rebuild, replaced)`
    judges the result at the end (`onnxvq.api.quantize` passes the fidelity gate)."""
    cfg = QuantConfig.coerce(config)
    if _is_trajectory(calib):  # a denoiser's own DDIM run (calibrate/denoiser)
        spec, shape = calib, _no_symbolic_sample
    else:
        spec = calibration_spec(calib, cfg, preprocess)
        spec.resolve_preprocess()  # a bad preprocessing config fails now, not after canonicalising
    proto = model_proto(model)
    if isinstance(spec, DataSpec):
        spec = spec.fitted(proto)  # a preset's crop follows a fixed 256-px input
        shape = partial(sample_shape, spec)
    graph, canonical, canon_report, structure = prepare(proto, cfg, validate=validate,
                                                        sample_shape=shape)
    symbolic, large = symbolic_image_dims(proto), is_large(proto)
    del proto  # loaded here, it is freed now (a model over 2 GB is not held twice)
    if large:
        release_freed()
    canonical, structure, split = _split_shortcuts(graph, canonical, structure, spec, cfg)
    canonical, structure, smooth_passes = _smooth(graph, canonical, structure, spec, cfg,
                                                  validate)
    canonical, structure, overrides, reparam_passes = _reparameterize(
        graph, canonical, structure, spec, cfg, validate)
    reparam_passes = [*smooth_passes, *reparam_passes]
    if not structure.is_vit and not structure.is_cnn:
        log.warning("no transformer blocks recognised: only weighted MatMul/Gemm/Conv inputs "
                    "will be quantized")
    ctx, calib_info = _calibrated_context(graph, canonical, structure, spec, cfg, progress,
                                          overrides)
    if large:  # the calibration sessions are gone
        release_freed()
    the_plan, qparams, fq_params = ctx.plan, dict(ctx.activation_qparams), ctx.fq_params
    out, report = quantization_pipeline(cfg).run_graph(graph, like=canonical, ctx=ctx,
                                                       validate=validate, numeric="none")
    if large:  # the float weights quantize-weights read are gone
        release_freed()
    weights = {r.node: r for p in report.passes for r in p.records if isinstance(r, WeightQParams)}
    passes = [*split, *reparam_passes, *report.passes]
    result = QuantResult(out, cfg, structure, the_plan, qparams, weights, passes, calib_info,
                         fq_params, canonicalization=canon_report, canonical=canonical,
                         data_spec=spec if isinstance(spec, DataSpec) else None,
                         source_path=None if isinstance(model, onnx.ModelProto) else str(model))
    if gate is not None:
        result.fidelity = gate(result, _rebuilder(canonical, ctx, cfg),
                               _replaced(canonical, fq_params, report.passes))
    result.external_data = large  # written with its weights beside it, as it came
    restore_input(result.model, symbolic)  # folded at the calibration shape
    return result


def _calibrated_context(graph, canonical, structure, spec, cfg: QuantConfig, progress,
                        overrides) -> tuple[PassContext, dict]:
    """Plan on the graph, calibrate on the canonical model: the quantization stage's context and
    the calibration summary."""
    the_plan = plan(graph, structure, cfg)
    fq = FqCalibration(the_plan, structure, cfg)
    moments = MomentCollector(moment_tensors(graph, the_plan) if needs_moments(cfg) else ())
    qparams, calib_info, fq_params = calibrate(canonical, the_plan, spec, cfg, None,
                                               progress, fq, structure, overrides, moments)
    twin = calib_info.pop("twin", {})  # twin-uniform sites: the twin-qdq pass quantizes them
    the_plan = replace(the_plan, activations=tuple(s for s in the_plan.activations
                                                   if s.tensor not in twin))
    if cfg.weight_only:  # the Linear inputs were observed for the weight methods' moments only
        the_plan, qparams = replace(the_plan, activations=()), {}
    ctx = PassContext(config=cfg, structure=structure, plan=the_plan, activation_qparams=qparams,
                      fq_params=fq_params,
                      weight_scales=_weight_scales(graph, the_plan, cfg, calib_info, moments),
                      twin_qparams=twin)
    return ctx, calib_info


def _rebuilder(canonical: onnx.ModelProto, ctx: PassContext, cfg: QuantConfig):
    """`rebuild(nodes)`: the canonical model rewritten afresh with only `nodes` (LayerNorm and
    Softmax names) made integer; the others are not calibrated, so they stay float."""
    def rebuild(nodes: frozenset) -> onnx.ModelProto:
        fq = ctx.fq_params
        only = replace(fq, layernorms={k: v for k, v in fq.layernorms.items() if k in nodes},
                       softmaxes={k: v for k, v in fq.softmaxes.items() if k in nodes})
        return quantization_pipeline(cfg).run_graph(
            to_graph(canonical), like=canonical, ctx=replace(ctx, fq_params=only),
            validate="none", numeric="none")[0]

    return rebuild


def _replaced(model: onnx.ModelProto, fq: FqParams, passes: list) -> list[str]:
    """The LayerNorm/Softmax nodes the integer passes replaced, in graph order."""
    if not any(r.applied for r in passes if r.pass_id in ("replace-layernorm", "replace-softmax")):
        return []
    names = set(fq.layernorms) | set(fq.softmaxes)
    return [n.name for n in model.graph.node if n.name in names]


def _is_trajectory(calib) -> bool:
    """Whether `calib` is a denoiser's DDIM trajectory (its module is imported only then)."""
    if calib is None or isinstance(calib, DataSpec | str | os.PathLike):
        return False
    from onnxvq.calibrate.denoiser import TrajectoryCalibration

    return isinstance(calib, TrajectoryCalibration)


def _no_symbolic_sample() -> tuple[int, ...]:
    raise CalibrationError("a denoiser calibrated on its DDIM run needs a static sample shape "
                           "(C, H, W) in the model")


def _split_shortcuts(graph, canonical, structure, spec, cfg: QuantConfig):
    """Q-Diffusion's shortcut splitting (`--split-shortcut RATIO`, ranges measured on the
    calibration data), before planning so that each part gets its own activation site."""
    if cfg.split_shortcut is None:
        return canonical, structure, []
    from onnxvq.quantizer.shortcut import split_shortcuts

    feeds = _calibration_feeds(canonical, spec, cfg, None, cfg.batch_size, None)[1]()
    canonical, split = split_shortcuts(graph, canonical, feeds, cfg.split_shortcut)
    if split.applied:
        infer_shapes_into(graph, canonical)
        structure = recognise(graph)
    return canonical, structure, [split]


def _smooth(graph, canonical, structure, spec, cfg, validate):
    """SmoothQuant (`--smooth`) on the same graph: the new FP32 model, its structure, the pass
    results; unchanged when off."""
    if not (cfg.smooth and structure.is_vit):
        if cfg.smooth:
            log.warning("--smooth did nothing: no transformer blocks recognised")
        return canonical, structure, []
    from onnxvq.quantizer.smooth import smooth

    done = smooth(graph, canonical, structure, spec, cfg, validate)
    infer_shapes_into(graph, done.model)
    return done.model, recognise(graph), done.passes


def _reparameterize(graph, canonical, structure, spec, cfg, validate):
    """RepQ-ViT (`--reparam`/`--reparam-mlp`) on the same graph: the new FP32 model, its
    structure, the site qparams it fixes and its pass results; unchanged when off."""
    if not ((cfg.reparam or cfg.reparam_mlp or cfg.center and cfg.symmetric)
            and structure.is_vit):
        return canonical, structure, {}, []
    from onnxvq.quantizer.reparam import reparameterize

    rep = reparameterize(graph, canonical, structure, spec, cfg, validate)
    infer_shapes_into(graph, rep.model)
    return rep.model, recognise(graph), rep.site_qparams, rep.passes


def model_proto(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if not isinstance(model, str | os.PathLike):
        raise UsageError(f"model must be a path or an onnx.ModelProto, got {type(model).__name__}")
    return load_model(model)


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
    count, feeds, record = _calibration_feeds(model, calib, cfg, preprocess, batch, fixed)
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


def _weight_scales(graph, the_plan: QuantPlan, cfg: QuantConfig, calib_info: dict,
                   moments: MomentCollector) -> dict:
    """Weight scales for quantize-weights: a search method's, then `weight_method`'s (which
    also rewrites the weights to their dequantized values, quantizer/weights.py)."""
    searched = calib_info.pop("weight_scales", {})
    if cfg.weight_method == "max" and not cfg.bias_correction:
        return searched
    return {**searched, **optimize_weights(graph, the_plan, cfg, moments.stats)}


def _calibration_feeds(model: onnx.ModelProto, calib, cfg: QuantConfig,
                       preprocess: Preprocess | None, batch: int, fixed):
    """(sample count, feeds(report) -> batches, record() -> summary) for `calib`: a data spec,
    path or None (batches clamped to a fixed batch dim and the memory budget, budget.py), or a
    denoiser's DDIM trajectory (held in memory, so PTS can take a second pass)."""
    if _is_trajectory(calib):
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
