"""onnxvq: post-training quantization of Vision Transformers on ONNX graphs."""

from onnxvq.core import runtime as _runtime  # noqa: F401  (first ORT session: flush-to-zero)
from onnxvq.core.errors import (
    CalibrationError,
    ModelLoadError,
    OnnxvqError,
    UnsupportedModelError,
    ValidationError,
)
from onnxvq.core.graph import load_model, save_model

__version__ = "0.1.0"

# The API in one place; imported last because these modules read __version__.
from onnxvq.api import canonicalize, inspect  # noqa: E402
from onnxvq.core.config import QuantConfig  # noqa: E402
from onnxvq.quantizer.result import QuantResult  # noqa: E402
from onnxvq.quantizer.run import quantize  # noqa: E402

__all__ = [
    "CalibrationError",
    "ModelLoadError",
    "OnnxvqError",
    "QuantConfig",
    "QuantResult",
    "UnsupportedModelError",
    "ValidationError",
    "canonicalize",
    "inspect",
    "load_model",
    "quantize",
    "save_model",
]
