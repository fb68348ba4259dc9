"""Errors onnxvq raises. The CLI maps each to a one-line message and a non-zero exit code."""

from __future__ import annotations


class OnnxvqError(Exception):
    """Base class: every failure a user can cause ends up as one of these."""

    exit_code = 1


class ModelLoadError(OnnxvqError):
    """The file is missing, truncated, or not an ONNX model."""

    exit_code = 2


class UnsupportedModelError(OnnxvqError):
    """The model is valid ONNX but uses something onnxvq cannot handle (opset, op, pattern)."""

    exit_code = 3


class ValidationError(OnnxvqError):
    """A pass produced a graph that fails the checker, shape inference, or the numeric check."""

    exit_code = 4


class CalibrationError(OnnxvqError):
    """Calibration data is missing, malformed, or produced non-finite activations."""

    exit_code = 5


class FidelityError(OnnxvqError):
    """The quantized model failed the fidelity gate (degenerate or far below the expected SQNR);
    nothing was written."""

    exit_code = 7
