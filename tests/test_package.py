"""Packaging promises: the core imports no heavy framework; passes/plugins live under onnxvq."""

from __future__ import annotations

import subprocess
import sys


def test_import_onnxvq_pulls_no_framework():
    code = ("import sys, onnxvq, onnxvq.passes.canonicalize, onnxvq.plugins, onnxvq.cli; "
            "print(sorted(m for m in ('torch', 'timm', 'tensorrt', 'transformers', 'triton') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_api_is_exported():
    import onnxvq

    for name in ("quantize", "inspect", "canonicalize", "QuantConfig", "load_model", "save_model"):
        assert hasattr(onnxvq, name)
    assert onnxvq.QuantConfig().target == "ort"
