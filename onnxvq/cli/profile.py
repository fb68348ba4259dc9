"""`onnxvq profile MODEL [QUANT]`: where the time goes, per op type and node, against the roofline.

`register(app)` adds the command to the `onnxvq` typer app. It parses options, calls
`onnxvq.verify.profile_report.profile`, and renders a table (or `--json`); `--html` writes the
report with the roofline plot.
"""

from __future__ import annotations

import json
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
    from rich.console import Console

    from onnxvq.verify.profile_report import profile, render_html

    out, err = Console(width=None if Console().is_terminal else 150), Console(stderr=True)
    for p in (model, quant):
        if p is not None and not p.is_file():
            err.print(f"[bold red]error:[/] {p}: no such file", highlight=False)
            raise typer.Exit(2)
    try:
        report = profile(model, quant, batch=batch, runs=runs, threads=threads)
    except OnnxvqError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(exc.exit_code) from None
    except Exception as exc:  # ORT refusing the model: one line, not a traceback
        err.print(f"[bold red]error:[/] ONNX Runtime could not run the model: {exc}".split("\n")[0],
                  highlight=False)
        raise typer.Exit(2) from None
    if html_out is not None:
        html_out.write_text(render_html(report))
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
        return
    _render(out, report, nodes)
    if html_out is not None:
        out.print(f"HTML report: {html_out}")


def _render(out, report, top: int) -> None:
    from rich.table import Table

    from onnxvq.verify.profile_report import HEADER, table_rows

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
