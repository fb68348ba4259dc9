"""onnxvq: post-training quantization of Vision Transformers on ONNX graphs."""

from onnxvq.errors import (
    CalibrationError,
    ModelLoadError,
    OnnxvqError,
    UnsupportedModelError,
    ValidationError,
)
from onnxvq.graph import load_model, save_model

__version__ = "0.1.0"

__all__ = [
    "CalibrationError",
    "ModelLoadError",
    "OnnxvqError",
    "UnsupportedModelError",
    "ValidationError",
    "load_model",
    "save_model",
]
