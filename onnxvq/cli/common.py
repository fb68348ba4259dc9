"""What every command shares: the two consoles, the error helper, the progress helper, JSON output.

stdout carries only the command's result (a table, or with `--json` one JSON document); logs,
progress bars and third-party chatter go to stderr. With `--json` a failure prints its document
too: `{"ok": false, "error": {"code", "kind", "message"}, ...what is known}` (the one-line message
still on stderr, the same exit code); a success's document starts with `"ok": true`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import typer
from rich.console import Console
from typer.core import TyperGroup

from onnxvq.core.errors import OnnxvqError
from onnxvq.core.metrics import format_db as db  # noqa: F401  (the CLI's dB format)

console = Console()
err_console = Console(stderr=True)


# Whether the command line asked for --json: set by the app's group from the raw arguments, so
# that every failure (typer's own usage errors too, raised before a command sees its flags)
# knows to print its JSON document.
_json_mode: ContextVar[bool] = ContextVar("onnxvq_json_mode", default=False)


class JsonAwareGroup(TyperGroup):
    """The `onnxvq` group: notes `--json` among the arguments; a usage error then prints its JSON
    document before typer prints the usage on stderr and exits 2."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        _json_mode.set("--json" in args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except typer.TyperException as exc:  # typer's (vendored click's) usage errors
            if _json_mode.get() and hasattr(exc, "format_message"):
                emit_error(getattr(exc, "exit_code", 2), "UsageError", exc.format_message())
            raise


def fail(exc: OnnxvqError, details: dict | None = None) -> typer.Exit:
    """Print `exc` as one line on stderr (with --json also its document on stdout, `details` and
    the exception's own `details` in it); the Exit to raise carries its exit code."""
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True, markup=True)
    if _json_mode.get():
        emit_error(exc.exit_code, type(exc).__name__, str(exc),
                   {**getattr(exc, "details", {}), **(details or {})})
    return typer.Exit(exc.exit_code)


def emit_error(code: int, kind: str, message: str, details: dict | None = None) -> None:
    """A failure's JSON document: what failed (exit code, error class, the message) first."""
    emit_json({"error": {"code": code, "kind": kind, "message": message}, **(details or {})},
              ok=False)


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


def emit_json(data: dict, ok: bool = True) -> None:
    """One JSON document on stdout, `"ok"` first (inf/nan written as the strings "inf", "-inf",
    "nan")."""
    typer.echo(json.dumps(_finite({"ok": ok, **data}), indent=1, default=str))


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x
