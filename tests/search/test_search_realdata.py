"""The search calibrators on the shared CIFAR-10 CCT at W4/A4 (slow; skipped without the data)."""

from __future__ import annotations

import pytest

from onnxvq.calibrate.preprocess import resolve_preprocess
from onnxvq.core.config import QuantConfig
from onnxvq.quantizer.run import quantize
from onnxvq.verify.evaluate import evaluate

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def test_block_mse_beats_omse_by_five_points_at_w4a4(shared_data):
    """Measured (256 calibration images, 2,000 val): OMSE 40.45 %, block-mse 46.30 % with the
    walk from OMSE's choice (46.80 % with the earlier full scan, 44.80 % with a coarser grid:
    the grid and the walk are what this test guards)."""
    model = shared_data / "models" / "cct_cifar10.onnx"
    prep = resolve_preprocess("cifar10")
    top1 = {}
    for method in ("omse", "block-mse"):
        result = quantize(model, shared_data / "cifar10" / "calib",
                          QuantConfig(method=method, w_bits=4, a_bits=4), preprocess=prep)
        top1[method] = evaluate(result.model, shared_data / "cifar10" / "val", prep).top1
    assert top1["omse"] == pytest.approx(0.405, abs=0.01)
    assert top1["block-mse"] >= top1["omse"] + 0.05
