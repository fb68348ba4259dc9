"""`quantize`: canonicalise, recognise, plan, calibrate in one ONNX Runtime pass, rewrite.

The pass pipelines are declared in `onnxvq.passes.pipelines`; this module picks one per stage.
Its stages live beside it: canonical.py (import, canonicalise, recognise), stages.py (the optional
FP32 rewrites), calibration.py (the calibration run and the site quantizers).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import onnx

from onnxvq.calibrate.budget import sample_shape
from onnxvq.calibrate.fq import FqCalibration
from onnxvq.calibrate.preprocess import Preprocess
from onnxvq.calibrate.spec import DataSpec
from onnxvq.calibrate.weights import MomentCollector
from onnxvq.core.config import QuantConfig
from onnxvq.core.errors import CalibrationError, UnsupportedModelError
from onnxvq.core.external import is_large, release_freed
from onnxvq.core.graph import to_graph
from onnxvq.core.params import FqParams, WeightQParams
from onnxvq.core.pipeline import PassContext, Validate
from onnxvq.passes.pipelines import quantization_pipeline
from onnxvq.passes.prepare import restore_input, symbolic_image_dims
from onnxvq.quantizer.calibration import calibrate, calibration_spec, is_trajectory, weight_scales
from onnxvq.quantizer.canonical import model_proto, prepare
from onnxvq.quantizer.placement import plan
from onnxvq.quantizer.result import QuantResult
from onnxvq.quantizer.stages import fp32_rewrites
from onnxvq.quantizer.weights import moment_tensors, needs_moments

__all__ = ["calibrate", "calibration_spec", "model_proto", "prepare", "quantize"]

log = logging.getLogger(__name__)


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
    spec = _checked_spec(calib, cfg, preprocess)
    proto = model_proto(model)
    check_not_quantized(proto, model)
    spec, shape = _fitted(spec, proto)
    graph, canonical, canon_report, structure = prepare(proto, cfg, validate=validate,
                                                        sample_shape=shape)
    symbolic, large = symbolic_image_dims(proto), is_large(proto)
    del proto  # loaded here, it is freed now (a model over 2 GB is not held twice)
    if large:
        release_freed()
    canonical, structure, overrides, fp32_passes = fp32_rewrites(graph, canonical, structure,
                                                                 spec, cfg, validate)
    if not structure.is_vit and not structure.is_cnn:
        log.warning("no transformer blocks recognised: only weighted MatMul/Gemm/Conv inputs "
                    "will be quantized")
    ctx, calib_info = _calibrated_context(graph, canonical, structure, spec, cfg, progress,
                                          overrides)
    if large:  # the calibration sessions are gone
        release_freed()
    the_plan, qparams, fq_params = ctx.plan, dict(ctx.activation_qparams), ctx.fq_params
    _check_planned(the_plan, model)
    out, report = quantization_pipeline(cfg).run_graph(graph, like=canonical, ctx=ctx,
                                                       validate=validate, numeric="none")
    if large:  # the float weights quantize-weights read are gone
        release_freed()
    weights = {r.node: r for p in report.passes for r in p.records if isinstance(r, WeightQParams)}
    result = QuantResult(out, cfg, structure, the_plan, qparams, weights,
                         [*fp32_passes, *report.passes], calib_info, fq_params,
                         canonicalization=canon_report, canonical=canonical,
                         data_spec=spec if isinstance(spec, DataSpec) else None,
                         source_path=None if isinstance(model, onnx.ModelProto) else str(model))
    if gate is not None:
        result.fidelity = gate(result, _rebuilder(canonical, ctx, cfg),
                               _replaced(canonical, fq_params, report.passes))
    result.external_data = large  # written with its weights beside it, as it came
    restore_input(result.model, symbolic)  # folded at the calibration shape
    return result


_QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearMatMul", "QLinearConv",
                            "MatMulInteger", "ConvInteger", "MatMulNBits"})


def check_not_quantized(proto: onnx.ModelProto, model) -> None:
    """An onnxvq (or other) quantized model given again: refused before canonicalisation, which
    would fold its integer ops through sessions and then find nothing left to quantize (and
    `inspect` nothing to recognise, after graphsurgeon's folding inside the com.onnxvq local
    functions printed ORT's "Invalid output count for op Constant in function ...")."""
    done = sum(n.op_type in _QUANTIZED_OPS or n.domain == "com.onnxvq" for n in proto.graph.node)
    if done:
        raise UnsupportedModelError(f"{_where(model)}: already quantized ({done} quantized or "
                                    "com.onnxvq nodes); give the FP32 model")


def _check_planned(plan, model) -> None:
    """A run that quantizes nothing would write a copy of its input and call it quantized."""
    if not plan.activations and not plan.weights:
        raise UnsupportedModelError(f"{_where(model)}: nothing to quantize (no transformer "
                                    "blocks and no MatMul/Gemm/Conv with a constant weight)")


def _where(model) -> str:
    return str(model) if isinstance(model, str | os.PathLike) else "the model"


def _checked_spec(calib, cfg: QuantConfig, preprocess: Preprocess | None):
    """`calib` as the calibration DataSpec (checked against `cfg`), or a denoiser's own DDIM run
    (calibrate/denoiser) as it is."""
    if is_trajectory(calib):
        return calib
    spec = calibration_spec(calib, cfg, preprocess)
    spec.resolve_preprocess()  # a bad preprocessing config fails now, not after canonicalising
    return spec


def _fitted(spec, proto: onnx.ModelProto) -> tuple:
    """(spec, sample_shape()) for the model: a preset's crop follows a fixed 256-px input; a DDIM
    run has no data spec to size symbolic dims from."""
    if not isinstance(spec, DataSpec):
        return spec, _no_symbolic_sample
    spec = spec.fitted(proto)
    return spec, partial(sample_shape, spec)


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
                      weight_scales=weight_scales(graph, the_plan, cfg, calib_info, moments),
                      twin_qparams=twin)
    return ctx, calib_info


def _rebuilder(canonical: onnx.ModelProto, ctx: PassContext, cfg: QuantConfig):
    """`rebuild(nodes)`: the canonical model rewritten afresh with only `nodes` (LayerNorm and
    Softmax names) made integer; the others are not calibrated, so they stay float.
    `rebuild(nodes, fused=False)`: the same without the ORT lowering (plain QDQ graph and
    unfused integer ops); None where the run has no lowering to leave out."""
    def rebuild(nodes: frozenset, fused: bool = True) -> onnx.ModelProto | None:
        run_cfg, run_ctx = cfg, ctx
        if not fused:
            if cfg.target != "ort" or not cfg.ort_fusions:
                return None
            run_cfg = replace(cfg, ort_fusions=False)
            run_ctx = replace(ctx, config=run_cfg)
        fq = ctx.fq_params
        only = replace(fq, layernorms={k: v for k, v in fq.layernorms.items() if k in nodes},
                       softmaxes={k: v for k, v in fq.softmaxes.items() if k in nodes})
        return quantization_pipeline(run_cfg).run_graph(
            to_graph(canonical), like=canonical, ctx=replace(run_ctx, fq_params=only),
            validate="none", numeric="none")[0]

    return rebuild


def _replaced(model: onnx.ModelProto, fq: FqParams, passes: list) -> list[str]:
    """The LayerNorm/Softmax nodes the integer passes replaced, in graph order."""
    if not any(r.applied for r in passes if r.pass_id in ("replace-layernorm", "replace-softmax")):
        return []
    names = set(fq.layernorms) | set(fq.softmaxes)
    return [n.name for n in model.graph.node if n.name in names]


def _no_symbolic_sample() -> tuple[int, ...]:
    raise CalibrationError("a denoiser calibrated on its DDIM run needs a static sample shape "
                           "(C, H, W) in the model")
