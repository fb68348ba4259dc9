"""Packaging promises: the core imports no heavy framework; passes/plugins live under onnxvq."""

from __future__ import annotations

import subprocess
import sys


def test_import_onnxvq_pulls_no_framework():
    code = ("import sys, onnxvq, onnxvq.passes.pipelines, onnxvq.plugins, onnxvq.cli.app; "
            "print(sorted(m for m in ('torch', 'timm', 'tensorrt', 'transformers', 'triton') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_api_is_exported():
    import onnxvq

    for name in ("quantize", "inspect", "canonicalize", "QuantConfig", "load_model", "save_model"):
        assert hasattr(onnxvq, name)
    assert onnxvq.QuantConfig().target == "ort"


_FTZ = """
import numpy as np, onnxruntime as ort
from onnx import TensorProto, helper
import onnxvq
from onnxvq.core.runtime import make_session
c = helper.make_tensor("c", TensorProto.FLOAT, [1], [1.0])
g = helper.make_graph([helper.make_node("Mul", ["x", "c"], ["y"])], "g",
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [c])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])  # like graphsurgeon
print(make_session(m, threads=1).run(None, {"x": np.full(4, 1e-40, np.float32)})[0].tolist())
"""


def test_sessions_flush_denormals_even_after_a_plain_session():
    """ORT takes flush-to-zero for the calling thread from the first session of a process only;
    importing onnxvq opens that first session (denormals made the shared CCT run 8x slower)."""
    out = subprocess.run([sys.executable, "-c", _FTZ], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[0.0, 0.0, 0.0, 0.0]"
