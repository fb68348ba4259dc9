"""Names the TensorRT plugins register under, and how to get TensorRT (no TensorRT import)."""

NAMESPACE = "onnxvq"  # no dots: tensorrt.plugin rejects them
PLUGIN_VERSION = "1"
OPS = ("IntLayerNorm", "LogIntSoftmax", "LogIntMatMul")
PLUGIN_IDS = tuple(f"{NAMESPACE}::{op}" for op in OPS)
INSTALL_HINT = (
    "pip install --extra-index-url https://pypi.nvidia.com tensorrt-cu13 "
    "(the libs wheel is served by pypi.nvidia.com only)"
)
