"""`onnxvq profile MODEL [QUANT]`: where the time goes, per op type and node, against the roofline.

`register(app)` adds the command to the `onnxvq` typer app. It parses options, calls
`onnxvq.verify.profile_report.profile`, and renders a table (or `--json`); `--html` writes the
report with the roofline plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxvq.core.errors import OnnxvqError


def register(app: typer.Typer) -> None:
    app.command("profile")(profile_cmd)


def profile_cmd(
    model: Annotated[Path, typer.Argument(help="ONNX model (FP32).")],
    quant: Annotated[Path | None, typer.Argument(help="Quantized model, profiled alongside.")]
    = None,
    batch: Annotated[int, typer.Option(help="Batch size of the random inputs.")] = 1,
    runs: Annotated[int, typer.Option(help="Profiled runs per model (interleaved).")] = 20,
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads.")] = 2,
    nodes: Annotated[int, typer.Option(help="Slowest nodes to list per model.")] = 10,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write an HTML report with "
                                                  "the roofline plot.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Profile MODEL (and QUANT) in ONNX Runtime: time, FLOPs, bytes, roofline position."""
    from onnxvq.cli.common import errors
    from onnxvq.core.errors import ModelLoadError
    from onnxvq.core.files import check_side_file, write_atomic
    from onnxvq.core.graph import load_model
    from onnxvq.verify.profile_report import profile, render_html

    with errors():
        protos = [None if p is None else load_model(p, check_opset=False) for p in (model, quant)]
        if html_out is not None:
            check_side_file(html_out, "--html", (model, quant))
        try:
            report = profile(*protos, batch=batch, runs=runs, threads=threads)
        except OnnxvqError:
            raise
        except Exception as exc:  # ORT refusing the model: one line, not a traceback
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"ONNX Runtime could not run the model: {first}") from None
    for label, path in (("fp32", model), ("quant", quant)):
        if path is not None:
            report.profiles[label].model = str(path)
    if html_out is not None:
        with errors():
            write_atomic(html_out, render_html(report), what="HTML report")
    if as_json:
        from onnxvq.cli.common import emit_json

        emit_json(report.to_dict())
        return
    _render(report, nodes)
    if html_out is not None:
        console().print(f"HTML report: {html_out}")


def console():
    from rich.console import Console

    from onnxvq.cli.common import console as shared

    # tables wider than a pipe's default 80 columns stay readable when redirected
    return shared if shared.is_terminal else Console(width=150)


def _render(report, top: int) -> None:
    from rich.table import Table

    from onnxvq.verify.profile_report import HEADER, table_rows

    out = console()
    roof, d = report.roofline, report.to_dict()
    out.print(f"roofline ({roof.threads} threads, measured): fp32 {roof.fp32_gflops:.1f} GFLOP/s, "
              f"int8 {roof.int8_gops:.1f} GOP/s, memory {roof.bandwidth_gbs:.1f} GB/s; load "
              f"average {' '.join(f'{v:.2f}' for v in report.load_average)}")
    for label, m in d["models"].items():
        for rows, first, title in ((m["op_types"], "op type", "per op type"),
                                   (sorted(m["nodes"], key=lambda r: -r["ms"])[:top], "node",
                                    f"slowest {top} nodes")):
            t = Table(title=f"{label} ({m['model']}), batch {m['batch']}: {m['total_ms']:.2f} ms"
                      f" per run; {title}")
            for i, col in enumerate((first, *HEADER)):
                t.add_column(col, justify="left" if i == 0 else "right")
            for row in table_rows(rows, m["kernel_ms"]):
                t.add_row(*row)
            out.print(t)
    if d["ratio"] is not None:
        out.print(f"quantized / FP32: {d['ratio']:.3f}× (same run, interleaved)")
