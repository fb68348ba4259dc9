"""Denoiser comparison: the same seeded DDIM loop with the FP32 and the quantized model."""

from __future__ import annotations

import math

from onnxvq.calibrate.denoiser import TrajectoryCalibration
from onnxvq.core.config import QuantConfig
from onnxvq.models.tiny_denoiser import build_tiny_denoiser
from onnxvq.quantizer.run import quantize
from onnxvq.verify.denoiser import compare_denoiser


def test_identical_models_compare_perfectly():
    model = build_tiny_denoiser()
    c = compare_denoiser(model, model, steps=5, samples=3, classes=4)
    assert c.timesteps == (800, 600, 400, 200, 0) and c.final_mse == 0
    assert math.isinf(c.final_psnr_db) and all(math.isinf(s) for s in c.step_sqnr_db)


def test_time_step_aware_calibration_beats_one_step_on_the_final_sample():
    model = build_tiny_denoiser(skip_gain=4.0)
    psnr = {}
    for interval in (20, 1):
        calib = TrajectoryCalibration(interval=interval, per_step=8, classes=4)
        quant = quantize(model, calib, QuantConfig(batch_size=8)).model
        c = compare_denoiser(model, quant, steps=20, samples=8, classes=4)
        assert len(c.step_sqnr_db) == 20 and all(s > 0 for s in c.step_sqnr_db)
        psnr[interval] = c.final_psnr_db
    assert psnr[1] > psnr[20], psnr
