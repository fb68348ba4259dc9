"""`quantize`: canonicalise, recognise, plan, calibrate in one ONNX Runtime pass, rewrite."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import onnx

from onnxvq.api import canonicalize
from onnxvq.calibrate import batches, make_observer, open_source
from onnxvq.calibrate.collect import collect
from onnxvq.calibrate.fq import FqCalibration, FqParams
from onnxvq.calibrate.preprocess import Preprocess, resolve_preprocess
from onnxvq.core.config import QuantConfig
from onnxvq.core.graph import load_model, to_graph
from onnxvq.core.pipeline import PassContext, Pipeline
from onnxvq.quantizer.placement import QuantPlan, plan
from onnxvq.quantizer.result import QuantResult
from onnxvq.recognise.model import recognise_model

log = logging.getLogger(__name__)


def quantize(
    model: str | os.PathLike | onnx.ModelProto,
    calib: str | os.PathLike | None = None,
    config: QuantConfig | None = None,
    *,
    preprocess: Preprocess | None = None,
    progress: Callable[[int], None] | None = None,
) -> QuantResult:
    """Quantize an FP32 ViT. `calib` is an image folder, a .npy/.npz file or folder, or None for
    Gaussian noise (data-free; logged as a warning, expect lower accuracy)."""
    cfg = config or QuantConfig()
    proto = model if isinstance(model, onnx.ModelProto) else load_model(model)
    canonical, _ = canonicalize(proto, numeric="none")
    if cfg.target == "trt":
        canonical = _scale_onto_query(canonical)
    structure = recognise_model(canonical)
    if not structure.is_vit:
        log.warning("no transformer blocks recognised: only weighted MatMul/Gemm/Conv inputs "
                    "will be quantized")
    graph = to_graph(canonical)
    the_plan = plan(graph, structure, cfg)
    fq = FqCalibration(the_plan, structure, cfg)
    qparams, calib_info, fq_params = calibrate(canonical, the_plan, calib, cfg, preprocess,
                                               progress, fq)
    ctx = PassContext(original=canonical)
    ctx.data.update(plan=the_plan, activation_qparams=qparams, structure=structure, config=cfg,
                    fq_params=fq_params)
    out, report = Pipeline(_quant_passes(cfg)).run(canonical, ctx=ctx, numeric="none")
    return QuantResult(out, cfg, structure, the_plan, qparams, ctx.data.get("weight_qparams", {}),
                       report.passes, calib_info, fq_params)


def _scale_onto_query(model: onnx.ModelProto) -> onnx.ModelProto:
    """TensorRT's fused attention wants the scale on Q before Q·Kᵀ (numerically neutral)."""
    from onnxvq.passes.fold_scale_into_query import FoldScaleIntoQuery

    out, _ = Pipeline((FoldScaleIntoQuery(),)).run(model, numeric="end")
    return out


def _quant_passes(cfg: QuantConfig) -> tuple:
    from onnxvq.passes.fold_requantize import FoldRequantize
    from onnxvq.passes.insert_qdq import InsertActivationQDQ
    from onnxvq.passes.quantize_weights import QuantizeWeights
    from onnxvq.passes.replace_layernorm import ReplaceLayerNorm
    from onnxvq.passes.replace_softmax import ReplaceSoftmax

    integer_ops = [p for p, on in ((ReplaceLayerNorm(), cfg.pts), (ReplaceSoftmax(), cfg.lis))
                   if on]
    return (*integer_ops, QuantizeWeights(), InsertActivationQDQ(), FoldRequantize())


def calibrate(model: onnx.ModelProto, the_plan: QuantPlan, calib, cfg: QuantConfig,
              preprocess: Preprocess | None, progress, fq: FqCalibration | None = None,
              ) -> tuple[dict[str, dict], dict, FqParams]:
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
        qparams[site.tensor] = {"scale": float(scale), "zero_point": int(zp),
                                "dtype": "int8" if signed else "uint8", "bits": site.bits,
                                "range": [float(lo), float(hi)], "role": site.role}
    fq_params = (fq.finish(model, observers, qparams, batches(source, cfg.batch_size, inp.name))
                 if fq is not None else FqParams())
    info = {"source": str(calib) if calib else "gaussian-noise", "samples": len(source),
            "method": cfg.method, "seconds": round(time.perf_counter() - t0, 3)}
    return qparams, info, fq_params
