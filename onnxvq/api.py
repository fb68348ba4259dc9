"""The Python API the CLI is a thin layer over."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import onnx

from onnxvq.core.errors import UsageError
from onnxvq.core.graph import load_model
from onnxvq.core.pipeline import PipelineReport
from onnxvq.passes.pipelines import canonicalize  # noqa: F401  (part of the API)
from onnxvq.recognise.structure import ViTStructure

log = logging.getLogger(__name__)


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
    from onnxvq.quantizer.run import check_not_quantized, prepare

    path = "<memory>" if isinstance(model, onnx.ModelProto) else str(model)
    proto = model if isinstance(model, onnx.ModelProto) else load_model(model)
    check_not_quantized(proto, model)
    _, canonical, report, structure = prepare(proto, numeric="end")
    return Inspection(path, structure, report, canonical)


def quantize(model, data=None, config=None, *, preprocess=None, progress=None, validate=None,
             check_data: str | os.PathLike | None = None, gate: bool = True):
    """`onnxvq.quantizer.run.quantize` ended by the fidelity gate (`onnxvq.verify.gate`): a few
    samples the calibration did not see (`check_data`, else held back from `data`) run through
    the FP32 and the quantized model; a degenerate result raises FidelityError (exit 7).
    `config.fail_below` makes the SQNR threshold explicit. The report is `result.fidelity`."""
    from onnxvq.calibrate.budget import clamp_to_fixed, fixed_batch
    from onnxvq.plugins.native import mlas_int8_exact
    from onnxvq.quantizer.flags import check_flags_applied
    from onnxvq.quantizer.run import quantize as run_quantize
    from onnxvq.verify.gate import SAMPLES, check_source, run_gate

    def judge(result, rebuild, replaced) -> dict:
        check_flags_applied(result)  # --pts/--lis that did nothing: say so, refuse if all did
        canonical, cfg = result.canonical, result.config
        samples = max(SAMPLES, fixed_batch(canonical) or 1)
        source, where = check_source(canonical, result.data_spec, cfg.calib_size, check_data,
                                     samples)
        report = run_gate(canonical, result.model, source, rebuild=rebuild, replaced=replaced,
                          fail_below=cfg.fail_below,
                          emulate_int8=cfg.target == "trt" and not mlas_int8_exact(),
                          batch_size=clamp_to_fixed(canonical, samples, "the fidelity gate"))
        return {"source": where, **report}

    from onnxvq.calibrate.denoiser import TrajectoryCalibration

    if gate and isinstance(data, TrajectoryCalibration):  # its inputs are a DDIM run, not images
        log.warning("the fidelity gate does not run on denoisers; check the result with "
                    "`onnxvq compare FP32 QUANT --ddim-steps N`")
        gate = False
    from onnxvq.core.config import QuantConfig

    cfg = QuantConfig.coerce(config)
    if cfg.target_sqnr is not None or cfg.max_drop is not None:  # accuracy-aware mixed precision
        from onnxvq.verify.mixed import mixed_precision

        return mixed_precision(
            lambda c: run_quantize(model, data, c, preprocess=preprocess, progress=progress,
                                   validate=validate, gate=judge if gate else flags_only),
            cfg, check_data)
    return run_quantize(model, data, cfg, preprocess=preprocess, progress=progress,
                        validate=validate, gate=judge if gate else flags_only)


def flags_only(result, rebuild, replaced) -> dict:
    """The gate turned off (`gate=False`, denoisers): the flags are still checked, so --pts on a
    CNN is refused rather than written as plain W8/A8; the fidelity report stays empty."""
    from onnxvq.quantizer.flags import check_flags_applied

    check_flags_applied(result)
    return {}


def quantize_file(model: str | os.PathLike, output: str | os.PathLike | None = None,
                  data=None, config=None, *, report: bool = False,
                  progress=None, check_data: str | os.PathLike | None = None):
    """Quantize the model file `model` and write `output` (default `<model>.int8.onnx`) with its
    sidecar as one pair, checking the output path before any work; with `report`, also the HTML
    report beside it. Returns the QuantResult and the paths written."""
    from pathlib import Path

    from onnxvq.quantizer.result import check_output_path

    if not isinstance(model, str | os.PathLike):
        raise UsageError(f"model must be a path, got {type(model).__name__}")
    model = Path(model)
    out = check_output_path(output or model.with_name(model.stem + ".int8.onnx"), model)
    result = quantize(model, data, config, progress=progress, check_data=check_data)
    path = result.save(out, source=model)
    written = {"model": path, "sidecar": path.with_suffix(".json")}
    if report:
        from onnxvq.verify.report import write_report

        spec = result.data_spec.with_(samples=None, batch_size=None) if result.data_spec else None
        written["report"] = write_report(model, result, spec, path.with_suffix(".html"))
    return result, written


def sensitivity(fp32, quant, data=None, *, blocks: bool = False, **kwargs):
    """Per-point SQNR (`verify.sensitivity.layer_sqnr`), or with `blocks` the damage of each block
    quantized alone (`block_damage`), worst first."""
    from onnxvq.verify.sensitivity import block_damage, layer_sqnr

    return (block_damage if blocks else layer_sqnr)(fp32, quant, data, **kwargs)


def report(fp32, quant, data=None, path: str | os.PathLike | None = None, **kwargs):
    """Write the HTML report (`verify.report.write_report`); default path `<quant>.html`."""
    from pathlib import Path

    from onnxvq.verify.report import write_report

    if path is None:
        if not isinstance(quant, str | os.PathLike):
            raise UsageError("report needs a path when `quant` is not a model file")
        path = Path(quant).with_suffix(".html")
    return write_report(fp32, quant, data, path, **kwargs)
