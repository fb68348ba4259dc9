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


def test_report_of_a_denoiser_plots_the_step_sqnr(tmp_path):
    """`onnxvq report` on a denoiser: the DDIM-loop comparison with the sampler settings and the
    class count the calibration recorded, one plot, one table row per step with the same SQNR
    as compare_denoiser."""
    import re

    from onnxvq.core.metrics import format_db
    from onnxvq.verify.report import write_report

    model = build_tiny_denoiser()
    calib = TrajectoryCalibration(interval=2, per_step=4, classes=4, steps=6)
    result = quantize(model, calib, QuantConfig(batch_size=8))
    path = write_report(model, result, None, tmp_path / "r.html", samples=3)
    text = path.read_text()
    assert "Denoising trajectory" in text and text.count("data:image/png;base64,") == 1
    c = compare_denoiser(model, result.model, steps=6, samples=3, classes=4)
    cells = re.findall(r"<tr><td>(\d+)</td><td>(\d+)</td><td>([^<]*)</td></tr>", text)
    assert [(int(k), int(t)) for k, t, _ in cells] == list(enumerate(c.timesteps, start=1))
    assert [v for *_, v in cells] == [format_db(s) for s in c.step_sqnr_db]
    assert f"PSNR {format_db(c.final_psnr_db)}" in text
