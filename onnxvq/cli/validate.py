"""CLI commands that check a quantized model: compare, eval, sensitivity, report.

`register(app)` adds them to a typer app. Every one takes the same data flags (`cli.options`) and
`--json`; on a quantized model the preprocessing defaults to what its sidecar recorded. `compare`
exits 1 when the check fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxvq.cli import options as o
from onnxvq.cli.common import console, db, emit_error, emit_json, errors, progress
from onnxvq.core.errors import CHECK_FAILED, UsageError

OptPath = Path | None


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_cmd)
    app.command("eval")(eval_cmd)
    app.command("sensitivity")(sensitivity_cmd)
    app.command("report")(report_cmd)


def compare_cmd(
    fp32: o.Fp32, quant: o.Quant, data: o.Data = None, samples: o.Samples = None,
    batch_size: o.BatchSize = 8, seed: o.Seed = 0, preset: o.PresetOpt = None,
    size: o.Size = None, mean: o.Mean = None, std: o.Std = None,
    preprocess_config: o.PreprocessConfig = None,
    atol: Annotated[float | None, typer.Option(help="Polygraphy absolute tolerance.")] = None,
    rtol: Annotated[float | None, typer.Option(help="Polygraphy relative tolerance.")] = None,
    sqnr_min: Annotated[float, typer.Option(help="Minimum SQNR (dB), < 0: off.")] = 20.0,
    save_inputs: Annotated[OptPath, typer.Option(help="Inputs as Polygraphy JSON.")] = None,
    save_outputs: Annotated[OptPath, typer.Option(help="FP32 outputs as Polygraphy JSON.")] = None,
    ddim_steps: Annotated[int | None, typer.Option(
        help="Denoisers: run the same seeded DDIM loop with both models (per-step SQNR, final "
        "MSE/PSNR) instead of comparing outputs.", rich_help_panel="Denoiser flags")] = None,
    classes: Annotated[int | None, typer.Option(help="Class count of a class-conditional "
                                                "denoiser.", rich_help_panel="Denoiser flags")
                       ] = None,
    as_json: o.Json = False,
) -> None:
    """Run FP32 and QUANT on the same inputs with Polygraphy; exit 1 if any output fails."""
    from onnxvq.verify.compare import compare

    if ddim_steps is not None:
        return _compare_denoiser(fp32, quant, ddim_steps, samples or 8, seed, classes, as_json)
    with errors():
        spec = o.data_spec(data, preset, size, mean, std, preprocess_config, samples, batch_size,
                           seed)
        result = compare(fp32, quant, spec, atol=atol, rtol=rtol,
                         sqnr_min=None if sqnr_min < 0 else sqnr_min,
                         save_inputs=save_inputs, save_outputs=save_outputs)
    if as_json and not result.passed:
        failed = ", ".join(o.name for o in result.outputs if not o.passed)
        emit_error(CHECK_FAILED, "CheckFailed", f"output(s) {failed} failed the comparison",
                   result.to_dict())
    elif as_json:
        emit_json(result.to_dict())
    else:
        _render_comparison(result, quant)
    if not result.passed:
        raise typer.Exit(CHECK_FAILED)


def eval_cmd(
    model: Annotated[Path, typer.Argument(help="ONNX classifier.")],
    folder: Annotated[OptPath, typer.Argument(
        help="ImageFolder root DATA/<class>/<image> (same as --data).", show_default=False)] = None,
    data: o.Data = None,
    samples: Annotated[int | None, typer.Option("--samples", "--limit",
                                                help="Strided, class-balanced subset.")] = None,
    batch_size: o.BatchSize = 64, seed: o.Seed = 0, preset: o.PresetOpt = None,
    size: o.Size = None, mean: o.Mean = None, std: o.Std = None,
    preprocess_config: o.PreprocessConfig = None,
    ref: Annotated[OptPath, typer.Option("--ref", help="Model to agree with (top-1).")] = None,
    as_json: o.Json = False,
) -> None:
    """Top-1/top-5 accuracy of MODEL on an ImageFolder, and agreement with --ref."""
    from onnxvq.verify.evaluate import evaluate

    with errors():
        if folder is not None and data is not None and folder != data:
            raise UsageError(f"two data folders given ({folder} and --data {data}); give one")
        spec = o.data_spec(data or folder, preset, size, mean, std, preprocess_config, samples,
                           batch_size, seed)
        with progress("evaluating") as advance:
            r = evaluate(model, spec, ref=ref, progress=advance)
    if as_json:
        emit_json({"model": str(model), "ref": str(ref) if ref else None, **r.to_dict()})
        return
    from rich.table import Table

    table = Table(title=f"{model.name} on {spec.source} ({r.images} images, {r.classes} classes)")
    for col in ("model", "top-1", "top-5", "agreement"):
        table.add_column(col, justify="right" if col != "model" else "left")
    table.add_row(model.name, f"{100 * r.top1:.2f} %", f"{100 * r.top5:.2f} %",
                  f"{100 * r.agreement:.2f} %" if r.agreement is not None else "")
    if r.ref_top1 is not None:
        table.add_row(f"{ref.name} (ref)", f"{100 * r.ref_top1:.2f} %", "", "")
    console.print(table)
    console.print(f"{r.seconds:.1f} s")


def sensitivity_cmd(
    fp32: o.Fp32, quant: o.Quant, data: o.Data = None, samples: o.Samples = None,
    batch_size: o.BatchSize = 16, seed: o.Seed = 0, preset: o.PresetOpt = None,
    size: o.Size = None, mean: o.Mean = None, std: o.Std = None,
    preprocess_config: o.PreprocessConfig = None,
    blocks: Annotated[bool, typer.Option("--blocks", help="One block at a time.")] = False,
    top: Annotated[int, typer.Option(help="Rows to show (worst first).")] = 15,
    as_json: o.Json = False,
) -> None:
    """SQNR at every LayerNorm/attention/MLP/residual point (or per block alone), worst first."""
    from onnxvq.api import sensitivity

    with errors():
        spec = o.data_spec(data, preset, size, mean, std, preprocess_config, samples, batch_size,
                           seed)
        with progress("blocks" if blocks else "samples") as advance:
            found = sensitivity(fp32, quant, spec, blocks=blocks, progress=advance)
    if blocks:
        rows = [{"unit": u.unit, "sqnr_db": u.sqnr_db, "agreement": u.agreement} for u in found]
    else:
        rows = [{"point": p.label, "tensor": p.probe.tensor, "kind": p.probe.kind,
                 "block": p.probe.block, "sqnr_db": p.sqnr_db, "cosine": p.cosine}
                for p in found]
    if as_json:
        emit_json({"quant": str(quant), "mode": "blocks" if blocks else "points", "rows": rows})
        return
    from rich.table import Table

    table = Table(title=f"{quant.name}: worst first")
    cols = (("unit", "quantized alone"), ("sqnr_db", "output SQNR (dB)"),
            ("agreement", "top-1 agreement")) if blocks else (
        ("point", "point"), ("tensor", "tensor"), ("sqnr_db", "SQNR (dB)"), ("cosine", "cosine"))
    for key, title in cols:
        table.add_column(title, justify="left" if key in ("unit", "point", "tensor") else "right")
    fmt = {"sqnr_db": db, "agreement": lambda v: f"{100 * v:.1f} %",
           "cosine": lambda v: f"{v:.5f}"}
    for row in rows[:top]:
        table.add_row(*[fmt.get(k, str)(row[k]) for k, _ in cols])
    console.print(table)


def report_cmd(
    fp32: o.Fp32, quant: o.Quant, data: o.Data = None, samples: o.Samples = None,
    batch_size: o.BatchSize = 16, seed: o.Seed = 0, preset: o.PresetOpt = None,
    size: o.Size = None, mean: o.Mean = None, std: o.Std = None,
    preprocess_config: o.PreprocessConfig = None,
    output: Annotated[OptPath, typer.Option("-o", "--output", help="Default: QUANT.html")] = None,
    classes: Annotated[int | None, typer.Option(
        help="Class count of a class-conditional denoiser (default: the sidecar's).",
        rich_help_panel="Denoiser flags")] = None,
    as_json: o.Json = False,
) -> None:
    """Write a self-contained HTML report: SQNR per layer, LayerNorm ranges, Softmax bins (a
    denoiser: noise-prediction SQNR per DDIM step)."""
    from onnxvq.api import report

    with errors():
        spec = o.data_spec(data, preset, size, mean, std, preprocess_config, samples, batch_size,
                           seed)
        with progress("report"):
            path = report(fp32, quant, spec, output, samples=samples, classes=classes)
    if as_json:
        emit_json({"report": str(path), "bytes": path.stat().st_size})
    else:
        console.print(f"report written to {path} ({path.stat().st_size / 1024:.0f} KiB)")


def _compare_denoiser(fp32: Path, quant: Path, steps: int, samples: int, seed: int,
                      classes: int | None, as_json: bool) -> None:
    from rich.table import Table

    from onnxvq.verify.denoiser import compare_denoiser

    with errors():
        c = compare_denoiser(fp32, quant, steps=steps, samples=samples, seed=seed,
                             classes=classes)
    if as_json:
        emit_json(c.to_dict())
        return
    table = Table(title=f"DDIM {steps} steps, {samples} samples: {quant.name} vs FP32",
                  title_justify="left")
    for col in ("step", "t", "noise-prediction SQNR (dB)"):
        table.add_column(col, justify="right")
    for k, (t, s) in enumerate(zip(c.timesteps, c.step_sqnr_db, strict=True), start=1):
        table.add_row(str(k), str(t), f"{s:.2f}")
    console.print(table)
    console.print(f"final sample: MSE {c.final_mse:.4g}, PSNR {c.final_psnr_db:.2f} dB")


def _render_comparison(result, quant: Path) -> None:
    from rich.table import Table

    table = Table(title=f"{quant.name} vs FP32 on {result.samples} samples ({result.source})")
    for col in ("output", "max abs", "mean abs", "median abs", "cosine", "SQNR dB", "verdict"):
        table.add_column(col, justify="left" if col == "output" else "right")
    for out in result.outputs:
        verdict = "[green]PASS[/]" if out.passed else "[bold red]FAIL[/]"
        table.add_row(out.name, f"{out.max_abs:.4g}", f"{out.mean_abs:.4g}",
                      f"{out.median_abs:.4g}", f"{out.cosine:.5f}", db(out.sqnr_db), verdict)
    console.print(table)
    checks = [f"SQNR >= {result.sqnr_min:g} dB"] if result.sqnr_min is not None else []
    if result.atol is not None or result.rtol is not None:
        checks.append(f"Polygraphy atol={result.atol or 0:g} rtol={result.rtol or 0:g}")
    console.print(f"{'PASSED' if result.passed else 'FAILED'} ({', '.join(checks) or 'no check'})")
    for kind, path in result.saved.items():
        console.print(f"saved {kind}: {path}")
