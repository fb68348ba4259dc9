"""The `onnxvq` command line: each command parses options, calls one API function, renders."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer
from rich.console import Console

from onnxvq.core.errors import OnnxvqError, UnsupportedModelError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Post-training quantization of Vision Transformers on ONNX graphs.")
console = Console()
err_console = Console(stderr=True)


def _fail(exc: OnnxvqError) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    return typer.Exit(exc.exit_code)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log each pass.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


@app.command()
def inspect(
    model: Path = typer.Argument(..., help="FP32 ONNX model."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Show the ViT structure onnxvq recognises in MODEL."""
    from onnxvq.api import inspect as inspect_model
    from onnxvq.cli.render import render_inspection

    try:
        with err_console.status(f"canonicalising and recognising {model.name}"):
            result = inspect_model(model)
    except OnnxvqError as exc:
        raise _fail(exc) from None
    if as_json:
        console.print_json(json.dumps(result.to_dict()))
    else:
        render_inspection(console, result)
    if not result.structure.is_vit:
        raise _fail(UnsupportedModelError(f"{model}: no transformer blocks found"))


@app.command()
def quantize(
    model: Path = typer.Argument(..., help="FP32 ONNX model."),
    output: Path = typer.Option(None, "-o", "--output", help="Default: MODEL.int8.onnx"),
    calib: Path = typer.Option(None, "--calib", help="Image folder or .npy/.npz; none: noise."),
    preset: str = typer.Option("imagenet", help="Preprocessing preset: imagenet, imagenet-hf, "
                               "cifar10, cifar10-vit."),
    size: int = typer.Option(None, help="Override the preset's input size."),
    mean: tuple[float, float, float] = typer.Option(None, help="Override the preset's mean (RGB)."),
    std: tuple[float, float, float] = typer.Option(None, help="Override the preset's std (RGB)."),
    preprocess_config: Path = typer.Option(None, help="JSON preprocessing config."),
    method: str = typer.Option("minmax", help="minmax, ema, percentile or omse."),
    target: str = typer.Option("ort", help="ort (uint8 asymmetric) or trt (int8 symmetric)."),
    w_bits: int = typer.Option(8, help="Weight bits."),
    a_bits: int = typer.Option(8, help="Activation bits."),
    attn_bits: int = typer.Option(None, help="Attention MatMul input bits (default a-bits; 4 "
                                  "with --lis)."),
    momentum: float = typer.Option(0.01, help="EMA momentum."),
    percentile: float = typer.Option(1e-5, help="Percentile tail mass per side."),
    skip: list[str] = typer.Option([], help="Keep nodes matching this glob float (repeatable)."),
    patch_embed: bool = typer.Option(True, help="Quantize the patch-embedding Conv."),
    head: bool = typer.Option(True, help="Quantize the classifier head."),
    pts: bool = typer.Option(False, "--pts", help="IntLayerNorm with power-of-two scales."),
    lis: bool = typer.Option(False, "--lis", help="LogIntSoftmax with log2 attention codes."),
    calib_size: int = typer.Option(256, help="Calibration samples."),
    batch_size: int = typer.Option(16, help="Calibration batch size."),
    report: bool = typer.Option(False, "--report", help="Write an HTML report beside the output."),
) -> None:
    """Quantize MODEL and write OUT.onnx plus its OUT.json sidecar of scales and settings."""
    from onnxvq.calibrate.preprocess import load_preprocess_config, resolve_preprocess
    from onnxvq.cli.render import render_quantization
    from onnxvq.core.config import QuantConfig
    from onnxvq.quantizer.run import quantize as run_quantize

    output = output or model.with_name(model.stem + ".int8.onnx")
    try:
        cfg = QuantConfig(method=method, target=target, w_bits=w_bits, a_bits=a_bits,
                          attn_bits=attn_bits, momentum=momentum, percentile=percentile,
                          skip=tuple(skip), quantize_patch_embed=patch_embed, quantize_head=head,
                          pts=pts, lis=lis, calib_size=calib_size, batch_size=batch_size)
        prep = (load_preprocess_config(preprocess_config) if preprocess_config
                else resolve_preprocess(preset, size=size, mean=mean, std=std))
        with _progress("quantizing (samples calibrated)") as advance:
            result = run_quantize(model, calib, cfg, preprocess=prep, progress=advance)
        path = result.save(output)
        if report:
            _write_report(model, result, calib, prep, path)
    except OnnxvqError as exc:
        raise _fail(exc) from None
    render_quantization(console, result, model, path)


@app.command()
def demo(
    output: Path = typer.Option(Path("onnxvq-demo"), "-o", "--output",
                                help="Folder for the models."),
    pts: bool = typer.Option(False, "--pts"),
    lis: bool = typer.Option(False, "--lis"),
) -> None:
    """Build a small ViT (no download), quantize it, print fidelity and speed."""
    from onnxvq.cli.render import render_demo
    from onnxvq.demo import run_demo

    try:
        result = run_demo(output, pts=pts, lis=lis)
    except OnnxvqError as exc:
        raise _fail(exc) from None
    render_demo(console, result)


@app.command("build-engine")
def build_engine(
    model: Path = typer.Argument(..., help="Quantized ONNX model (e.g. from --target trt)."),
    engine: Path = typer.Option(None, "-o", "--output", help="Default: MODEL.engine"),
    max_batch: int = typer.Option(64, help="Largest batch of the optimization profile."),
    compare: bool = typer.Option(True, help="Compare the engine with ONNX Runtime (Polygraphy)."),
    atol: float = typer.Option(1e-3, help="Absolute tolerance of the comparison."),
) -> None:
    """Build a TensorRT engine with onnxvq's plugins and compare it with ONNX Runtime.
    Needs the tensorrt package and an NVIDIA GPU; says which is missing otherwise."""
    from onnxvq.verify.trt import EngineConfig, compare_with_ort
    from onnxvq.verify.trt import build_engine as build

    try:
        cfg = EngineConfig(max_batch=max_batch, opt_batch=min(8, max_batch))
        report = build(model, engine, config=cfg)
        console.print(f"engine {report.engine_path}: {report.size_bytes / 1e6:.1f} MB, "
                      f"{report.num_layers} layers, plugins {', '.join(report.plugins) or '-'}, "
                      f"built in {report.build_seconds:.1f} s")
        if compare:
            cmp = compare_with_ort(model, report.engine_path, atol=atol, rtol=0.0, config=cfg)
            for name, err in cmp.max_abs_error.items():
                console.print(f"{name}: max |TensorRT - ONNX Runtime| = {err:.3g}")
            if not cmp.passed:
                raise typer.Exit(1)
    except OnnxvqError as exc:
        raise _fail(exc) from None


def _write_report(model, result, calib, prep, path) -> None:
    from onnxvq.verify.report import write_report

    write_report(model, result, calib, path.with_suffix(".html"), preprocess=prep)


class _progress:
    """A rich progress bar that counts samples; yields the callback `advance(n)`."""

    def __init__(self, label: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self._bar = Progress("[progress.description]{task.description}", BarColumn(),
                             MofNCompleteColumn(), TimeElapsedColumn(), console=err_console,
                             transient=True)
        self._label = label

    def __enter__(self):
        self._bar.__enter__()
        task = self._bar.add_task(self._label, total=None)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc):
        return self._bar.__exit__(*exc)


def _register_validation_commands() -> None:
    from onnxvq.cli.validate import register

    register(app)


_register_validation_commands()
__import__("onnxvq.cli.profile", fromlist=["register"]).register(app)
