"""CLI commands that check a quantized model: compare, eval, sensitivity, report.

`register(app)` adds them to the `onnxvq` typer app. Each parses options, calls one API function,
renders with rich, and maps OnnxvqError to its exit code; `compare` exits 1 when the check fails.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

_PRESET_HELP = "Preprocessing preset: imagenet, imagenet-hf, cifar10, cifar10-vit."
Fp32 = Annotated[Path, typer.Argument(help="FP32 ONNX model.")]
Quant = Annotated[Path, typer.Argument(help="Quantized ONNX model (its .json sidecar beside it).")]
Data = Annotated[Path | None, typer.Option("--data", help="Image folder or .npy/.npz; none: "
                                           "Gaussian noise.")]
Preset = Annotated[str, typer.Option(help=_PRESET_HELP)]
OptPath = Path | None


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_cmd)
    app.command("eval")(eval_cmd)
    app.command("sensitivity")(sensitivity_cmd)
    app.command("report")(report_cmd)


def compare_cmd(
    fp32: Fp32,
    quant: Quant,
    data: Data = None,
    preset: Preset = "imagenet",
    samples: Annotated[int, typer.Option(help="Samples to compare.")] = 8,
    batch_size: Annotated[int, typer.Option(help="Samples per inference.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the random inputs.")] = 0,
    atol: Annotated[float | None, typer.Option(help="Polygraphy absolute tolerance.")] = None,
    rtol: Annotated[float | None, typer.Option(help="Polygraphy relative tolerance.")] = None,
    sqnr_min: Annotated[float, typer.Option(help="Minimum SQNR (dB), < 0: off.")] = 20.0,
    save_inputs: Annotated[OptPath, typer.Option(help="Inputs as Polygraphy JSON.")] = None,
    save_outputs: Annotated[OptPath, typer.Option(help="FP32 outputs as Polygraphy JSON.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Run FP32 and QUANT on the same inputs with Polygraphy; exit 1 if any output fails."""
    from onnxvq.verify.compare import compare

    with _errors():
        result = compare(fp32, quant, data, preprocess=_preprocess(preset), samples=samples,
                         batch_size=batch_size, seed=seed, atol=atol, rtol=rtol,
                         sqnr_min=None if sqnr_min < 0 else sqnr_min,
                         save_inputs=save_inputs, save_outputs=save_outputs)
    out = _consoles()[0]
    if as_json:
        out.print_json(json.dumps(result.to_dict(), default=str))
    else:
        _render_comparison(out, result, quant)
    if not result.passed:
        raise typer.Exit(1)


def eval_cmd(
    model: Annotated[Path, typer.Argument(help="ONNX classifier.")],
    data: Annotated[Path, typer.Argument(help="ImageFolder root: DATA/<class>/<image>.")],
    preset: Preset = "imagenet",
    ref: Annotated[OptPath, typer.Option("--ref", help="Model to agree with (top-1).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per inference.")] = 64,
    limit: Annotated[int | None, typer.Option(help="Strided subset of this size.")] = None,
) -> None:
    """Top-1/top-5 accuracy of MODEL on an ImageFolder, and agreement with --ref."""
    from rich.table import Table

    from onnxvq.verify.evaluate import evaluate

    with _errors(), _bar("evaluating") as advance:
        r = evaluate(model, data, preset, ref=ref, batch_size=batch_size, limit=limit,
                     progress=advance)
    table = Table(title=f"{model.name} on {data} ({r.images} images, {r.classes} classes)")
    for col in ("model", "top-1", "top-5", "agreement"):
        table.add_column(col, justify="right" if col != "model" else "left")
    table.add_row(model.name, f"{100 * r.top1:.2f} %", f"{100 * r.top5:.2f} %",
                  f"{100 * r.agreement:.2f} %" if r.agreement is not None else "")
    if r.ref_top1 is not None:
        table.add_row(f"{ref.name} (ref)", f"{100 * r.ref_top1:.2f} %", "", "")
    out = _consoles()[0]
    out.print(table)
    out.print(f"{r.seconds:.1f} s")


def sensitivity_cmd(
    fp32: Fp32,
    quant: Quant,
    data: Data = None,
    preset: Preset = "imagenet",
    samples: Annotated[int, typer.Option(help="Samples to run.")] = 32,
    batch_size: Annotated[int, typer.Option(help="Samples per inference.")] = 16,
    blocks: Annotated[bool, typer.Option("--blocks", help="One block at a time.")] = False,
    top: Annotated[int, typer.Option(help="Rows to show (worst first).")] = 15,
) -> None:
    """SQNR at every LayerNorm/attention/MLP/residual point (or per block alone), worst first."""
    from rich.table import Table

    from onnxvq.verify.sensitivity import block_damage, layer_sqnr

    prep = _preprocess(preset)
    with _errors(), _bar("blocks" if blocks else "samples") as advance:
        if blocks:
            rows = [(u.unit, "", _db(u.sqnr_db), f"{100 * u.agreement:.1f} %")
                    for u in block_damage(fp32, quant, data, preprocess=prep, samples=samples,
                                          batch_size=batch_size, progress=advance)]
            cols = ("quantized alone", "", "output SQNR (dB)", "top-1 agreement")
        else:
            rows = [(p.label, p.probe.tensor, _db(p.sqnr_db), f"{p.cosine:.5f}")
                    for p in layer_sqnr(fp32, quant, data, preprocess=prep, samples=samples,
                                        batch_size=batch_size, progress=advance)]
            cols = ("point", "tensor", "SQNR (dB)", "cosine")
    table = Table(title=f"{quant.name}: worst first")
    for col in cols:
        if col:
            table.add_column(col, justify="right" if "SQNR" in col or col in (
                "cosine", "top-1 agreement") else "left")
    for row in rows[:top]:
        table.add_row(*[c for c, h in zip(row, cols, strict=True) if h])
    _consoles()[0].print(table)


def report_cmd(
    fp32: Fp32,
    quant: Quant,
    data: Data = None,
    preset: Preset = "imagenet",
    samples: Annotated[int, typer.Option(help="Samples to run.")] = 32,
    output: Annotated[OptPath, typer.Option("-o", "--output", help="Default: QUANT.html")] = None,
) -> None:
    """Write a self-contained HTML report: SQNR per layer, LayerNorm ranges, Softmax bins."""
    from onnxvq.verify.report import write_report

    with _errors():
        path = write_report(fp32, quant, data, output or quant.with_suffix(".html"),
                            preprocess=_preprocess(preset), samples=samples)
    _consoles()[0].print(f"report written to {path} ({path.stat().st_size / 1024:.0f} KiB)")


def _render_comparison(out, result, quant: Path) -> None:
    from rich.table import Table

    table = Table(title=f"{quant.name} vs FP32 on {result.samples} samples ({result.source})")
    for col in ("output", "max abs", "mean abs", "median abs", "cosine", "SQNR dB", "verdict"):
        table.add_column(col, justify="left" if col == "output" else "right")
    for o in result.outputs:
        verdict = "[green]PASS[/]" if o.passed else "[bold red]FAIL[/]"
        table.add_row(o.name, f"{o.max_abs:.4g}", f"{o.mean_abs:.4g}", f"{o.median_abs:.4g}",
                      f"{o.cosine:.5f}", _db(o.sqnr_db), verdict)
    out.print(table)
    checks = [f"SQNR >= {result.sqnr_min:g} dB"] if result.sqnr_min is not None else []
    if result.atol is not None or result.rtol is not None:
        checks.append(f"Polygraphy atol={result.atol or 0:g} rtol={result.rtol or 0:g}")
    out.print(f"{'PASSED' if result.passed else 'FAILED'} ({', '.join(checks) or 'no check'})")
    for kind, path in result.saved.items():
        out.print(f"saved {kind}: {path}")


def _preprocess(preset: str):
    from onnxvq.calibrate.preprocess import resolve_preprocess

    with _errors():
        return resolve_preprocess(preset)


def _db(v: float) -> str:
    return "inf" if math.isinf(v) and v > 0 else f"{v:.2f}"


def _consoles():
    from onnxvq.cli.app import console, err_console

    return console, err_console


@contextmanager
def _errors():
    from onnxvq.cli.app import _fail
    from onnxvq.core.errors import OnnxvqError

    try:
        yield
    except OnnxvqError as exc:
        raise _fail(exc) from None


@contextmanager
def _bar(label: str):
    """A rich progress bar counting samples; yields the callback `advance(n)`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=_consoles()[1], transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda n: bar.advance(task, n)
