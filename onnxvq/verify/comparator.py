"""The one Polygraphy comparator every check goes through (compare, sensitivity, report, TensorRT).

Runners are Polygraphy runners (`OnnxrtRunner` on onnxvq's sessions, which register the custom
ops; `TrtRunner` for engines); `Comparator.run` feeds them the same inputs and
`Comparator.compare_accuracy` with `SimpleCompareFunc` applies atol/rtol. The error statistics
themselves come from `onnxvq.core.metrics`.

Polygraphy's logger prints to stdout; every call here sends it to stderr instead, so a command's
`--json` output stays parseable. Library calls log Polygraphy's warnings, never its info lines.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx

from onnxvq.core.errors import OnnxvqError, UnsupportedModelError, UsageError
from onnxvq.core.runtime import make_session


@contextlib.contextmanager
def polygraphy_to_stderr() -> Iterator[None]:
    """Polygraphy's log lines ([W], [I]...) go to stderr, at warning level and above."""
    from polygraphy.logger import G_LOGGER

    with contextlib.redirect_stdout(sys.stderr), G_LOGGER.verbosity(G_LOGGER.WARNING):
        yield


def ort_runner(model: onnx.ModelProto | str | os.PathLike, name: str, *,
               threads: int | None = None):
    """A Polygraphy `OnnxrtRunner` on an onnxvq session (custom ops registered)."""
    from polygraphy.backend.onnxrt import OnnxrtRunner

    return OnnxrtRunner(make_session(model, threads=threads), name=name)


def run(runners: list, feeds: Iterable[dict], *, save_inputs: str | os.PathLike | None = None):
    """`Comparator.run` on `feeds`; returns Polygraphy's RunResults."""
    from polygraphy.comparator import Comparator

    with polygraphy_to_stderr():
        try:
            return Comparator.run(runners, data_loader=list(feeds),
                                  save_inputs_path=_parent_made(save_inputs))
        except OnnxvqError:
            raise
        except Exception as exc:  # Polygraphy raises PolygraphyException, ORT its own types
            raise UnsupportedModelError(f"running the models failed: {_short(exc)}") from exc


def tolerance_verdicts(results, ref: str, test: str, *, atol: float | None,
                       rtol: float | None) -> dict[str, bool]:
    """Polygraphy's elementwise atol/rtol verdict per output of `test` against `ref`, over all
    iterations (an output passes when it passes in every iteration)."""
    from polygraphy.comparator import Comparator, SimpleCompareFunc

    func = SimpleCompareFunc(atol=atol if atol is not None else 0.0,
                             rtol=rtol if rtol is not None else 0.0)
    with polygraphy_to_stderr():
        accuracy = Comparator.compare_accuracy(results, compare_func=func)
    verdicts: dict[str, bool] = {}
    for per_iteration in accuracy[0][(ref, test)]:
        for name, ok in per_iteration.items():
            verdicts[name] = verdicts.get(name, True) and bool(ok)
    return verdicts


def output_names(results, runner: str) -> list[str]:
    return list(results[runner][0].keys())


def concatenated(results, runner: str, output: str) -> np.ndarray:
    """One output of one runner over all iterations, flattened and joined."""
    iterations = results[runner]
    if not all(output in it for it in iterations):
        raise UsageError(f"runner {runner} produced no output named '{output}'")
    return np.concatenate([np.ravel(it[output]) for it in iterations])


def save_outputs(results, runner: str, path: str | os.PathLike) -> None:
    """One runner's outputs in Polygraphy's RunResults JSON (`polygraphy run --load-outputs`)."""
    from polygraphy.comparator import RunResults

    only = RunResults()
    only.append((runner, results[runner]))
    with polygraphy_to_stderr():
        only.save(_parent_made(path))


def _parent_made(p: str | os.PathLike | None) -> str | None:
    if p is None:
        return None
    Path(p).parent.mkdir(parents=True, exist_ok=True)
    return str(p)


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
