"""`quantize`: canonicalise, recognise, plan, calibrate in one ONNX Runtime pass, rewrite.

The pass pipelines are declared in `onnxvq.passes.pipelines`; this module picks one per stage.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import onnx

from onnxvq.calibrate import batches, make_observer, open_source
from onnxvq.calibrate.collect import collect
from onnxvq.calibrate.fq import FqCalibration
from onnxvq.calibrate.preprocess import Preprocess, resolve_preprocess
from onnxvq.core.config import QuantConfig
from onnxvq.core.graph import infer_shapes_into, load_model, to_graph
from onnxvq.core.params import ActivationQParams, FqParams, QuantPlan, WeightQParams
from onnxvq.core.pipeline import PassContext, Validate
from onnxvq.passes.pipelines import canonical_pipeline, quantization_pipeline
from onnxvq.quantizer.placement import plan
from onnxvq.quantizer.result import QuantResult
from onnxvq.recognise.model import recognise

log = logging.getLogger(__name__)


def quantize(
    model: str | os.PathLike | onnx.ModelProto,
    calib: str | os.PathLike | None = None,
    config: QuantConfig | None = None,
    *,
    preprocess: Preprocess | None = None,
    progress: Callable[[int], None] | None = None,
    validate: Validate | None = None,
) -> QuantResult:
    """Quantize an FP32 ViT. `calib` is an image folder, a .npy/.npz file or folder, or None for
    Gaussian noise (data-free; logged as a warning, expect lower accuracy).

    One graph for the whole run: the model is imported once, canonicalised, recognised and planned
    on, then quantized in place; it is exported and checked once per stage (`validate="each"`, or
    `ONNXVQ_VALIDATE=each`, checks after every pass instead)."""
    cfg = config or QuantConfig()
    proto = model if isinstance(model, onnx.ModelProto) else load_model(model)
    graph = to_graph(proto)
    canonical, canon_report = canonical_pipeline(cfg).run_graph(graph, like=proto,
                                                                validate=validate, numeric="none")
    infer_shapes_into(graph, canonical)  # recognition reads head shapes off the graph
    structure = recognise(graph)
    if not structure.is_vit:
        log.warning("no transformer blocks recognised: only weighted MatMul/Gemm/Conv inputs "
                    "will be quantized")
    the_plan = plan(graph, structure, cfg)
    fq = FqCalibration(the_plan, structure, cfg)
    qparams, calib_info, fq_params = calibrate(canonical, the_plan, calib, cfg, preprocess,
                                               progress, fq)
    ctx = PassContext(config=cfg, structure=structure, plan=the_plan, activation_qparams=qparams,
                      fq_params=fq_params)
    out, report = quantization_pipeline(cfg).run_graph(graph, like=canonical, ctx=ctx,
                                                       validate=validate, numeric="none")
    weights = {r.node: r for p in report.passes for r in p.records if isinstance(r, WeightQParams)}
    return QuantResult(out, cfg, structure, the_plan, qparams, weights, report.passes, calib_info,
                       fq_params, canonicalization=canon_report, canonical=canonical)


def calibrate(model: onnx.ModelProto, the_plan: QuantPlan, calib, cfg: QuantConfig,
              preprocess: Preprocess | None, progress, fq: FqCalibration | None = None,
              ) -> tuple[dict[str, ActivationQParams], dict, FqParams]:
    """One ORT run over the calibration data (two with PTS: its per-channel shifts need the
    range first); returns qparams per activation site, a summary, and the PTS/LIS parameters."""
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else "N" for d in dims]
    source = open_source(calib, preprocess or resolve_preprocess("imagenet"), cfg.calib_size, shape)
    if calib is None:
        log.warning("NO CALIBRATION DATA: calibrating on %d samples of Gaussian noise. Accuracy "
                    "will be lower than with real images; pass --calib DIR.", len(source))
    opts = {"ema": {"momentum": cfg.momentum}, "percentile": {"tail": cfg.percentile}}
    t0 = time.perf_counter()
    sites = [s.tensor for s in the_plan.activations]

    def make(name: str):
        return make_observer(cfg.method, name, **opts.get(cfg.method, {}))

    if fq is not None:
        make = fq.observer_factory(make, set(sites))
    observers = collect(model, sites + (fq.tensors if fq else []),
                        batches(source, cfg.batch_size, inp.name, progress), make)
    signed = cfg.symmetric
    qparams = {}
    for site in the_plan.activations:
        scale, zp = observers[site.tensor].qparams(site.bits, symmetric=cfg.symmetric,
                                                   signed=signed)
        lo, hi = observers[site.tensor].range()
        qparams[site.tensor] = ActivationQParams(float(scale), int(zp),
                                                 "int8" if signed else "uint8", site.bits,
                                                 (float(lo), float(hi)), site.role)
    fq_params = (fq.finish(model, observers, qparams, batches(source, cfg.batch_size, inp.name))
                 if fq is not None else FqParams())
    info = {"source": str(calib) if calib else "gaussian-noise", "samples": len(source),
            "method": cfg.method, "seconds": round(time.perf_counter() - t0, 3)}
    return qparams, info, fq_params
