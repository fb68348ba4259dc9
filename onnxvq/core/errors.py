"""Every error onnxvq raises, each with its own exit code; the CLI prints one line and exits.

| code | meaning |
|---:|---|
| 0 | success |
| 1 | a check ran and failed (`compare` verdict FAIL, `build-engine` comparison off tolerance) |
| 2 | usage: a bad flag, flag value, config value or path (typer's own usage errors exit 2 too) |
| 3 | `ModelLoadError`: the model file is truncated or not ONNX |
| 4 | `UnsupportedModelError`: valid ONNX that onnxvq cannot handle (opset, no blocks, ...) |
| 5 | `CalibrationError`: the calibration/evaluation data is missing, malformed or mismatched |
| 6 | `ValidationError`: a pass produced a graph that fails the checker or the numeric check |
| 7 | `FidelityError`: the quantized model failed the fidelity gate; nothing was written |
| 8 | `BackendUnavailable`: TensorRT or a GPU is needed and missing |
| 9 | `EngineBuildError`: TensorRT could not parse or build the model |
| 10 | `NativeBuildError`: the native custom-op library is missing and cannot be built |
"""

from __future__ import annotations

#: Exit code of a check that ran and failed (not an exception: the command still prints its table).
CHECK_FAILED = 1


class OnnxvqError(Exception):
    """Base class: every failure a user can cause ends up as one of the subclasses below.
    `details`: what is known of the failure beyond the message (the gate's report), for `--json`."""

    exit_code = 1

    def __init__(self, *args, details: dict | None = None) -> None:
        super().__init__(*args)
        self.details = details or {}


class UsageError(OnnxvqError, ValueError):
    """A bad argument: flag or config value out of range, wrong type, or a path that cannot be
    used (missing, a directory where a file is expected, the output equal to the input)."""

    exit_code = 2


class ModelLoadError(OnnxvqError):
    """The file is truncated or not an ONNX model."""

    exit_code = 3


class UnsupportedModelError(OnnxvqError):
    """The model is valid ONNX but uses something onnxvq cannot handle (opset, op, pattern)."""

    exit_code = 4


class CalibrationError(OnnxvqError):
    """Calibration data is missing, malformed, or produced non-finite activations."""

    exit_code = 5


class ValidationError(OnnxvqError):
    """A pass produced a graph that fails the checker, shape inference, or the numeric check."""

    exit_code = 6


class FidelityError(OnnxvqError):
    """The quantized model failed the fidelity gate (degenerate or far below the expected SQNR);
    nothing was written."""

    exit_code = 7


class BackendUnavailable(OnnxvqError):
    """A backend (TensorRT, a GPU) that the request needs is not present on this machine."""

    exit_code = 8


class EngineBuildError(OnnxvqError):
    """TensorRT could not parse the model or build an engine from it."""

    exit_code = 9


class NativeBuildError(OnnxvqError):
    """The native custom-op library is missing and cannot be built (no compiler, no headers...)."""

    exit_code = 10


ERRORS = (UsageError, ModelLoadError, UnsupportedModelError, CalibrationError, ValidationError,
          FidelityError, BackendUnavailable, EngineBuildError, NativeBuildError)
