"""onnxvq's custom operators: integer references, ONNX local functions, the native ONNX Runtime
kernels and the TensorRT plugins (installed as ``onnxvq.plugins``)."""

from onnxvq.plugins.native import native_available, ort_library_path

__all__ = ["native_available", "ort_library_path"]
