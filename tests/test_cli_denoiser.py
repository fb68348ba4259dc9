"""`onnxvq quantize --calib-steps`: time-step-aware calibration of a denoiser from the CLI."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from onnxvq.cli.app import app
from onnxvq.core.graph import save_model
from onnxvq.models.tiny_denoiser import build_tiny_denoiser

runner = CliRunner()


def test_quantize_calibrates_along_the_ddim_trajectory(tmp_path):
    src = save_model(build_tiny_denoiser(), tmp_path / "d.onnx")
    result = runner.invoke(app, ["quantize", str(src), "--calib-steps", "4", "--classes", "4",
                                 "--calib-per-step", "3", "--ddim", "12", "0", "cosine",
                                 "--json"])
    assert result.exit_code == 0, result.output
    calib = json.loads(result.output)["calibration"]
    assert calib["collected_steps"] == [4, 8, 12] and calib["samples"] == 9
    assert calib["schedule"] == "cosine"
    sidecar = json.loads((tmp_path / "d.int8.json").read_text())
    assert sidecar["calibration"]["timesteps"] == calib["timesteps"]


def test_denoiser_flag_errors_are_one_line(tmp_path):
    src = save_model(build_tiny_denoiser(), tmp_path / "d.onnx")
    result = runner.invoke(app, ["quantize", str(src), "--calib-steps", "5"])
    assert result.exit_code != 0 and "--classes N" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["quantize", str(src), "--calib-steps", "5", "--classes", "4",
                                 "--denoiser-inputs", "sample"])
    assert result.exit_code != 0 and "role=name pairs" in result.output


def test_denoiser_flags_without_calib_steps_warn(tmp_path):
    src = save_model(build_tiny_denoiser(), tmp_path / "d.onnx")
    result = runner.invoke(app, ["quantize", str(src), "--classes", "4"])
    assert "do nothing without --calib-steps" in result.output


def test_compare_runs_the_same_ddim_loop(tmp_path):
    src = save_model(build_tiny_denoiser(), tmp_path / "d.onnx")
    assert runner.invoke(app, ["quantize", str(src), "--calib-steps", "2", "--classes",
                               "4"]).exit_code == 0
    result = runner.invoke(app, ["compare", str(src), str(tmp_path / "d.int8.onnx"),
                                 "--ddim-steps", "6", "--classes", "4", "--samples", "3",
                                 "--json"])
    assert result.exit_code == 0, result.output
    c = json.loads(result.output)
    assert c["timesteps"] == [830, 664, 498, 332, 166, 0] and len(c["step_sqnr_db"]) == 6
    assert c["samples"] == 3 and c["final_psnr_db"] > 10
    text = runner.invoke(app, ["compare", str(src), str(tmp_path / "d.int8.onnx"),
                               "--ddim-steps", "3", "--classes", "4"]).output
    assert "final sample: MSE" in text and "PSNR" in text
