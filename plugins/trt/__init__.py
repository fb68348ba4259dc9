"""TensorRT plugins for onnxvq's custom ops: Triton kernels compiled ahead of time to PTX.

``register_plugins()`` registers IntLayerNorm, LogIntSoftmax and LogIntMatMul (namespace
``onnxvq``, version "1") with ``tensorrt.plugin`` so TensorRT's ONNX parser maps onnxvq's nodes
to them; no Python runs inside the engine. ``tensorrt.plugin`` refuses namespaces containing a
dot, so the plugin namespace cannot be the ONNX domain ``com.onnxvq``: nodes must carry
``plugin_namespace="onnxvq"`` (the parser reads that attribute before falling back to the
domain). Registering needs the ``tensorrt`` package, building engines a GPU. The kernels
themselves (``kernels``, ``launch``) need only Triton and run on the CPU under
``TRITON_INTERPRET=1``. A C++ IPluginV3 would need ``NvInfer.h``, which no package installable
here ships, hence Python plugins.
"""

from __future__ import annotations

from onnxvq.core.errors import BackendUnavailable
from onnxvq.plugins.trt.names import INSTALL_HINT, NAMESPACE, OPS, PLUGIN_IDS, PLUGIN_VERSION


def register_plugins() -> tuple[str, ...]:
    """Register the plugins with TensorRT's registry (idempotent); returns their ids.

    Raises ``BackendUnavailable`` when ``tensorrt.plugin`` cannot be imported.
    """
    try:
        import tensorrt.plugin  # noqa: F401
    except ImportError as err:
        msg = f"tensorrt.plugin is not importable ({err}); {INSTALL_HINT}"
        raise BackendUnavailable(msg) from err
    from onnxvq.plugins.trt import registry  # noqa: F401  (registering is importing)

    return PLUGIN_IDS


__all__ = ["INSTALL_HINT", "NAMESPACE", "OPS", "PLUGIN_IDS", "PLUGIN_VERSION", "register_plugins"]
