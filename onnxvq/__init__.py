"""onnxvq: post-training quantization of Vision Transformers on ONNX graphs."""

# Importing the plugins registers the native ORT kernels with core.runtime; importing the runtime
# opens the first ORT session (flush-to-zero for denormals).
from onnxvq import plugins as _plugins  # noqa: F401
from onnxvq.api import canonicalize, inspect, quantize, quantize_file, report, sensitivity
from onnxvq.calibrate.spec import DataSpec
from onnxvq.core import runtime as _runtime  # noqa: F401
from onnxvq.core.config import QuantConfig
from onnxvq.core.errors import (
    BackendUnavailable,
    CalibrationError,
    EngineBuildError,
    FidelityError,
    ModelLoadError,
    NativeBuildError,
    OnnxvqError,
    UnsupportedModelError,
    UsageError,
    ValidationError,
)
from onnxvq.core.graph import load_model, save_model
from onnxvq.core.version import __version__
from onnxvq.quantizer.result import QuantResult
from onnxvq.verify.compare import compare
from onnxvq.verify.evaluate import evaluate

__all__ = [
    "BackendUnavailable", "CalibrationError", "DataSpec", "EngineBuildError", "FidelityError",
    "ModelLoadError", "NativeBuildError", "OnnxvqError", "QuantConfig", "QuantResult",
    "UnsupportedModelError", "UsageError", "ValidationError", "__version__", "canonicalize",
    "compare", "evaluate", "inspect", "load_model", "quantize", "quantize_file", "report",
    "save_model", "sensitivity",
]
