"""The `onnxvq` command line: each command parses options, calls one API function, renders."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer
from rich.console import Console

from onnxvq.errors import OnnxvqError, UnsupportedModelError

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
    from onnxvq.render import render_inspection

    try:
        result = inspect_model(model)
    except OnnxvqError as exc:
        raise _fail(exc) from None
    if as_json:
        console.print_json(json.dumps(result.to_dict()))
    else:
        render_inspection(console, result)
    if not result.structure.is_vit:
        raise _fail(UnsupportedModelError(f"{model}: no transformer blocks found"))
