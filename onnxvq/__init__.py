"""onnxvq: post-training quantization of Vision Transformers on ONNX graphs."""

from onnxvq.core import runtime as _runtime  # noqa: F401  (first ORT session: flush-to-zero)
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

__version__ = "0.1.0"

# The API in one place; imported last because these modules read __version__.
from onnxvq.api import canonicalize, inspect, quantize_file, report, sensitivity  # noqa: E402
from onnxvq.calibrate.spec import DataSpec  # noqa: E402
from onnxvq.core.config import QuantConfig  # noqa: E402
from onnxvq.quantizer.result import QuantResult  # noqa: E402
from onnxvq.quantizer.run import quantize  # noqa: E402
from onnxvq.verify.compare import compare  # noqa: E402
from onnxvq.verify.evaluate import evaluate  # noqa: E402

__all__ = [
    "BackendUnavailable", "CalibrationError", "DataSpec", "EngineBuildError", "FidelityError",
    "ModelLoadError", "NativeBuildError", "OnnxvqError", "QuantConfig", "QuantResult",
    "UnsupportedModelError", "UsageError", "ValidationError", "canonicalize", "compare",
    "evaluate", "inspect", "load_model", "quantize", "quantize_file", "report", "save_model",
    "sensitivity",
]
