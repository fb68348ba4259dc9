"""The `onnxvq` command line: each command parses options, calls one API function, renders.

Shared flags live in `cli.options`, the consoles and the error/progress/JSON helpers in
`cli.common`; the validation commands (compare, eval, sensitivity, report) in `cli.validate`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from onnxvq.cli import options as o
from onnxvq.cli.common import (
    JsonAwareGroup,
    console,
    emit_error,
    emit_json,
    errors,
    fail,
    progress,
    warn,
)
from onnxvq.cli.validate import register
from onnxvq.core.errors import CHECK_FAILED, UnsupportedModelError, UsageError

app = typer.Typer(cls=JsonAwareGroup, add_completion=False, no_args_is_help=True,
                  help="Post-training quantization of Vision Transformers on ONNX graphs.")
register(app)

_DEFAULTS = {"momentum": 0.01, "percentile": 1e-5}
_USES = {"momentum": "ema", "percentile": "percentile"}


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log each pass.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)  # Python warnings (third-party deprecations) go to stderr too


@app.command()
def inspect(model: o.Fp32, as_json: o.Json = False) -> None:
    """Show the ViT structure onnxvq recognises in MODEL."""
    from onnxvq.api import inspect as inspect_model
    from onnxvq.cli.render import render_inspection

    with errors(), progress(f"canonicalising and recognising {model.name}"):
        result = inspect_model(model)
    found = result.structure.is_vit or result.structure.is_cnn
    if not as_json:
        render_inspection(console, result)
    elif found:
        emit_json(result.to_dict())
    if not found:  # with --json, the failure's document carries the inspection
        raise fail(UnsupportedModelError(f"{model}: no transformer blocks found"),
                   result.to_dict())


@app.command()
def quantize(
    model: o.Fp32,
    output: Annotated[Path | None, typer.Option("-o", "--output",
                                                help="Default: MODEL.int8.onnx")] = None,
    data: Annotated[Path | None, typer.Option(
        "--data", "--calib", help="Calibration images or .npy/.npz; none: Gaussian noise.",
        rich_help_panel="Data flags")] = None,
    samples: Annotated[int, typer.Option("--samples", "--calib-size", help="Calibration samples.",
                                         rich_help_panel="Data flags")] = 256,
    batch_size: o.BatchSize = 16,
    seed: o.Seed = 0,
    preset: o.PresetOpt = None,
    size: o.Size = None,
    mean: o.Mean = None,
    std: o.Std = None,
    preprocess_config: o.PreprocessConfig = None,
    method: Annotated[o.Method, typer.Option(help="Range observer.")] = "minmax",
    target: Annotated[o.Target, typer.Option(help="ort (uint8 asymmetric) or trt (int8 "
                                             "symmetric).")] = "ort",
    w_bits: Annotated[int, typer.Option(help="Weight bits.")] = 8,
    a_bits: Annotated[int, typer.Option(help="Activation bits.")] = 8,
    attn_bits: Annotated[int | None, typer.Option(
        help="Attention MatMul input bits (default a-bits; 4 with --lis).")] = None,
    momentum: Annotated[float, typer.Option(help="EMA momentum (--method ema).")] = 0.01,
    percentile: Annotated[float, typer.Option(
        help="Tail mass clipped per side (--method percentile).")] = 1e-5,
    skip: Annotated[list[str] | None, typer.Option(
        help="Keep nodes matching this glob float (repeatable).")] = None,
    patch_embed: Annotated[bool, typer.Option(help="Quantize the patch-embedding Conv.")] = True,
    head: Annotated[bool, typer.Option(help="Quantize the classifier head.")] = True,
    pts: Annotated[bool, typer.Option("--pts", help="IntLayerNorm, power-of-two scales.")] = False,
    lis: Annotated[bool, typer.Option("--lis", help="LogIntSoftmax, log2 codes.")] = False,
    lis_base: Annotated[str, typer.Option(
        help="LogIntSoftmax code base with --lis: 2 (FQ-ViT log2) or sqrt2 (RepQ-ViT "
             "half-octave codes).")] = "2",
    lis_qdq: Annotated[bool, typer.Option(
        "--lis-qdq", help="The --lis log codes emulated with standard ops (Log, QuantizeLinear, "
        "Exp) for runtimes without onnxvq's custom ops.")] = False,
    recipe: Annotated[str | None, typer.Option(
        help="repq: the best low-bit settings (RepQ-ViT reparameterisation, GPTQ weights, omse, "
             "8-bit patch embedding/head); smooth: the best 8-bit settings (SmoothQuant + bias "
             "correction); fills the flags left at their defaults.")] = None,
    reparam: Annotated[bool, typer.Option(
        "--reparam", help="Per-channel LayerNorm-output quantizers folded (RepQ-ViT).")] = False,
    reparam_mlp: Annotated[bool, typer.Option(
        "--reparam-mlp", help="Per-channel MLP-activation quantizers, rescaled into fc2.")] = False,
    weight_method: Annotated[str, typer.Option(
        help="Weight quantizer: max, mse, output (clipping searches) or gptq.")] = "max",
    fisher: Annotated[bool, typer.Option(
        "--fisher", help="block-mse/twin: weight the output error by a Fisher estimate of the "
        "model's output sensitivity.")] = False,
    bias_correction: Annotated[bool, typer.Option(
        "--bias-correction", help="Fold the mean output shift of the quantized weights into "
        "the bias.")] = False,
    weight_only: Annotated[bool, typer.Option(
        "--weight-only", help="Quantize only the Linear weights (to --w-bits; 4 bits run as "
        "MatMulNBits); activations stay float.")] = False,
    target_sqnr: Annotated[float | None, typer.Option(
        "--target-sqnr", help="Mixed precision: raise the most sensitive Linears to 8 bits (float "
        "last) until the output SQNR vs FP32 reaches this many dB.")] = None,
    max_drop: Annotated[float | None, typer.Option(
        "--max-drop", help="Mixed precision: the same until top-1 disagreement with FP32 is at "
        "most this many percent.")] = None,
    rank_by: Annotated[str, typer.Option(
        help="Mixed precision ranking: sensitivity (measured) or nuclear (PTQ-for-ViT's "
        "nuclear-norm prior).")] = "sensitivity",
    smooth: Annotated[bool, typer.Option(
        "--smooth", help="SmoothQuant: per-channel factors (alpha searched per layer) moved from "
        "Linear inputs into their weights.")] = False,
    quantized_linear: Annotated[str, typer.Option(
        help="Target ort: run the int8 Linears as onnxvq's QuantizedLinear (AMX tiles, bit-exact "
        "with MatMulIntegerToFloat): auto (where this CPU has AMX-INT8 or AVX-512 VNNI), on or "
        "off.")] = "auto",
    ort_weights: Annotated[str, typer.Option(
        help="Target ort: the weights of ONNX Runtime's own int8 kernels as int8, or uint8 "
        "W+128 with zero point 128 (the same values; exact where MLAS's int8 kernels saturate): "
        "auto (uint8 where this CPU has no VNNI and no AMX), int8 or uint8.")] = "auto",
    report: Annotated[bool, typer.Option("--report", help="Write an HTML report beside the "
                                         "output.")] = False,
    split_shortcut: Annotated[float | None, typer.Option(
        help="Split a Conv/MatMul over a Concat whose parts' ranges differ by more than this "
        "ratio, one scale per part (Q-Diffusion).")] = None,
    calib_steps: Annotated[int | None, typer.Option(
        help="Denoisers: calibrate on a DDIM run of the FP32 model, keeping the inputs of every "
        "C-th step (Q-Diffusion; C = --ddim-steps keeps the last step only).",
        rich_help_panel="Denoiser flags")] = None,
    calib_per_step: Annotated[int, typer.Option(help="Samples kept per calibration step.",
                                                rich_help_panel="Denoiser flags")] = 8,
    ddim: Annotated[tuple[int, float, str], typer.Option(
        "--ddim", help="DDIM steps, eta and beta schedule (linear, scaled_linear, cosine).",
        rich_help_panel="Denoiser flags")] = (20, 0.0, "linear"),
    classes: Annotated[int | None, typer.Option(help="Class count of a class-conditional "
                                                "denoiser.", rich_help_panel="Denoiser flags")
                       ] = None,
    denoiser_inputs: Annotated[str | None, typer.Option(
        help="sample=NAME,timestep=NAME[,class_label=NAME] when names do not tell.",
        rich_help_panel="Denoiser flags")] = None,
    as_json: o.Json = False,
    check_data: Annotated[Path | None, typer.Option(
        "--check-data", help="Samples for the fidelity gate (default: held back from --data).",
        rich_help_panel="Data flags")] = None,
    fail_below: Annotated[float | None, typer.Option(
        "--fail-below", help="Fidelity gate: fail when an output's SQNR is below this many dB "
        "(default: only a collapsed output fails).")] = None,
) -> None:
    """Quantize MODEL and write OUT.onnx plus its OUT.json sidecar of scales and settings."""
    from onnxvq.api import quantize_file
    from onnxvq.cli.render import quantization_dict, render_quantization
    from onnxvq.core.config import QuantConfig

    with errors():
        spec = o.data_spec(data, preset, size, mean, std, preprocess_config, None, None, seed)
        cfg = QuantConfig(method=method.value, target=target.value, w_bits=w_bits, a_bits=a_bits,
                          attn_bits=attn_bits, momentum=momentum, percentile=percentile,
                          skip=tuple(skip or ()), quantize_patch_embed=patch_embed,
                          quantize_head=head, pts=pts, lis=lis, lis_base=lis_base,
                          lis_qdq=lis_qdq,
                          calib_size=samples,
                          batch_size=batch_size, seed=seed, fail_below=fail_below,
                          recipe=recipe, reparam=reparam, reparam_mlp=reparam_mlp,
                          weight_method=weight_method, bias_correction=bias_correction,
                          split_shortcut=split_shortcut, fisher=fisher,
                          weight_only=weight_only, target_sqnr=target_sqnr,
                          max_drop=max_drop, rank_by=rank_by, smooth=smooth,
                          quantized_linear=quantized_linear, ort_weights=ort_weights)
        _warn_inert(cfg, momentum=momentum, percentile=percentile,
                    quantized_linear=quantized_linear, ort_weights=ort_weights,
                    lis_base=lis_base, rank_by=rank_by)
        _warn_max_low_bit_weights(cfg)
        spec = _denoiser_spec(spec, data, samples, seed, calib_steps, calib_per_step, ddim,
                              classes, denoiser_inputs)
        with progress("quantizing (samples calibrated)") as advance:
            result, written = quantize_file(model, output, spec, cfg, report=report,
                                            progress=advance, check_data=check_data)
    _warn_unmatched_skips(result)
    if as_json:
        emit_json(quantization_dict(result, model, written))
    else:
        render_quantization(console, result, model, written["model"])


def _denoiser_spec(spec, data, samples, seed, calib_steps, per_step, ddim, classes, inputs):
    """With --calib-steps, the denoiser's own DDIM run replaces the data spec (Q-Diffusion)."""
    if calib_steps is None:
        if inputs or classes or per_step != 8 or ddim != (20, 0.0, "linear"):
            warn("denoiser flags do nothing without --calib-steps")
        return spec
    from onnxvq.calibrate.denoiser import trajectory_from_flags

    if data is not None:
        raise UsageError("--calib-steps calibrates on the model's own DDIM run; drop --data")
    if samples != 256:
        warn("--samples does nothing with --calib-steps (the count is --calib-per-step × the "
             "kept steps)")
    return trajectory_from_flags(calib_steps, per_step, ddim, seed, classes, inputs)


def _warn_inert(cfg, *, momentum, percentile, quantized_linear, lis_base, rank_by,
                ort_weights) -> None:
    """A warning for each flag the user set that this configuration never reads (the flags as
    given, not as a --recipe filled them in)."""
    for flag, value in (("momentum", momentum), ("percentile", percentile)):
        if value != _DEFAULTS[flag] and cfg.method != _USES[flag]:
            warn(f"--{flag} {value:g} does nothing with --method {cfg.method} (only "
                 f"--method {_USES[flag]} uses it)")
    if quantized_linear != "auto" and (cfg.target != "ort" or cfg.weight_only):
        warn(f"--quantized-linear {quantized_linear} does nothing without int8 Linears for "
             "target ort")
    if ort_weights != "auto" and (cfg.target != "ort" or cfg.weight_only):
        warn(f"--ort-weights {ort_weights} does nothing without int8 weights for target ort")
    if lis_base != "2" and not (cfg.lis or cfg.lis_qdq):
        warn(f"--lis-base {lis_base} does nothing without --lis or --lis-qdq")
    if rank_by != "sensitivity" and cfg.target_sqnr is None and cfg.max_drop is None:
        warn("--rank-by does nothing without --target-sqnr or --max-drop")


def _warn_max_low_bit_weights(cfg) -> None:
    """Sub-8-bit weights with plain max scales: the gate passes them (random-weight exports give
    8-23 dB at W4/A8 whatever the weight method, so no SQNR floor tells a good result from a poor
    one), but on the trained CIFAR-10 models they cost real accuracy that a flag recovers
    (README's low-bit table, 2,000 images, plain = --method omse: W4/A8 max weights 68.45 % /
    76.75 % against FP32 70.30 / 78.40, 86-91 % agreement; --recipe repq 70.55 / 77.90,
    95-97 %)."""
    if cfg.w_bits < 8 and cfg.weight_method == "max":
        warn(f"--w-bits {cfg.w_bits} with max weight scales: on the trained CIFAR-10 models W4/A8 "
             "lost 1.7-1.9 top-1 points this way and at most 0.5 with --recipe repq "
             "(--weight-method gptq alone was worse on one of them); pass --recipe repq, and "
             "check on real images (onnxvq eval)")


def _warn_unmatched_skips(result) -> None:
    for pattern in result.config.skip:
        if not any(n.name and _match(n.name, pattern) for n in result.model.graph.node) and \
                not any(_match(n, pattern) for n, _ in result.plan.skipped):
            warn(f"--skip {pattern!r} matches no node: nothing was kept float by it")


def _match(name: str, pattern: str) -> bool:
    from fnmatch import fnmatchcase

    return fnmatchcase(name, pattern)


@app.command()
def demo(
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the models.")] = Path(
        "onnxvq-demo"),
    pts: Annotated[bool, typer.Option("--pts")] = False,
    lis: Annotated[bool, typer.Option("--lis")] = False,
    as_json: o.Json = False,
) -> None:
    """Build a small ViT (no download), quantize it, print fidelity and speed."""
    from onnxvq.cli.render import demo_dict, render_demo
    from onnxvq.demo import run_demo

    with errors(), progress("building, quantizing and timing the demo ViT"):
        result = run_demo(output, pts=pts, lis=lis)
    if as_json:
        emit_json(demo_dict(result))
    else:
        render_demo(console, result)


@app.command("build-engine")
def build_engine(
    model: Annotated[Path, typer.Argument(help="Quantized ONNX model (e.g. from --target trt).")],
    engine: Annotated[Path | None, typer.Option("-o", "--output",
                                                help="Default: MODEL.engine")] = None,
    max_batch: Annotated[int, typer.Option(help="Largest batch of the profile.")] = 64,
    compare: Annotated[bool, typer.Option(help="Compare the engine with ONNX Runtime "
                                          "(Polygraphy).")] = True,
    atol: Annotated[float, typer.Option(help="Absolute tolerance of the comparison.")] = 1e-3,
    as_json: o.Json = False,
) -> None:
    """Build a TensorRT engine with onnxvq's plugins and compare it with ONNX Runtime.
    Needs the tensorrt package and an NVIDIA GPU; says which is missing otherwise."""
    from onnxvq.verify.trt import EngineConfig, compare_with_ort
    from onnxvq.verify.trt import build_engine as build

    with errors():
        cfg = EngineConfig(max_batch=max_batch, opt_batch=min(8, max_batch))
        report = build(model, engine, config=cfg)
        cmp = (compare_with_ort(model, report.engine_path, atol=atol, rtol=0.0, config=cfg)
               if compare else None)
    out = {"engine": str(report.engine_path), "bytes": report.size_bytes,
           "layers": report.num_layers, "plugins": list(report.plugins),
           "build_seconds": round(report.build_seconds, 3),
           "comparison": None if cmp is None else {"passed": cmp.passed, "atol": atol,
                                                   "max_abs_error": cmp.max_abs_error}}
    if as_json and cmp is not None and not cmp.passed:
        emit_error(CHECK_FAILED, "CheckFailed", f"the engine differs from ONNX Runtime by more "
                   f"than atol {atol:g}", out)
    elif as_json:
        emit_json(out)
    else:
        console.print(f"engine {report.engine_path}: {report.size_bytes / 1e6:.1f} MB, "
                      f"{report.num_layers} layers, plugins {', '.join(report.plugins) or '-'}, "
                      f"built in {report.build_seconds:.1f} s")
        for name, err in (cmp.max_abs_error.items() if cmp else ()):
            console.print(f"{name}: max |TensorRT - ONNX Runtime| = {err:.3g}")
    if cmp is not None and not cmp.passed:
        raise typer.Exit(CHECK_FAILED)


__import__("onnxvq.cli.profile", fromlist=["register"]).register(app)
