"""onnxvq's custom operators: integer references, ONNX local functions, the native ONNX Runtime
kernels and the TensorRT plugins (installed as ``onnxvq.plugins``)."""
