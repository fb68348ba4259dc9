"""What every command shares: the two consoles, the error helper, the progress helper, JSON output.

stdout carries only the command's result (a table, or with `--json` one JSON document); logs,
progress bars and third-party chatter go to stderr.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from onnxvq.core.errors import OnnxvqError
from onnxvq.core.metrics import format_db as db  # noqa: F401  (the CLI's dB format)

console = Console()
err_console = Console(stderr=True)


def fail(exc: OnnxvqError) -> typer.Exit:
    """Print `exc` as one line on stderr; the Exit to raise carries its exit code."""
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True, markup=True)
    return typer.Exit(exc.exit_code)


@contextmanager
def errors() -> Iterator[None]:
    """Turn an OnnxvqError raised inside into its one-line message and exit code."""
    try:
        yield
    except OnnxvqError as exc:
        raise fail(exc) from None


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


@contextmanager
def progress(label: str) -> Iterator[Callable[[int], None]]:
    """A transient rich progress bar on stderr counting samples; yields `advance(n)`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda n: bar.advance(task, n)


def emit_json(data) -> None:
    """One JSON document on stdout (inf/nan written as the strings "inf", "-inf", "nan")."""
    typer.echo(json.dumps(_finite(data), indent=1, default=str))


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x
