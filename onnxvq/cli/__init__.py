"""The `onnxvq` command line (a thin layer over the Python API)."""

from onnxvq.cli.app import app

__all__ = ["app"]
