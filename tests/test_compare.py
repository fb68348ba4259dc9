"""compare: Polygraphy-driven FP32-vs-quantized check, its statistics, verdicts and saved files."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import typer
from typer.testing import CliRunner

from onnxvq.core.config import QuantConfig
from onnxvq.models.tiny_vit import build_tiny_vit
from onnxvq.quantizer.run import quantize
from onnxvq.verify.compare import compare, error_stats


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path, Path]:
    """FP32 tiny ViT, its noise-calibrated quantization, and a copy with one scale x100."""
    root = tmp_path_factory.mktemp("compare")
    fp32 = build_tiny_vit()
    onnx.save(fp32, root / "fp32.onnx")
    result = quantize(fp32, None, QuantConfig(calib_size=16, batch_size=8))
    q = result.save(root / "q.onnx")
    broken = onnx.load(q)
    mis_scale(broken, next(t for t, p in result.activation_qparams.items() if p.role == "linear"
                           and t != "input"))
    onnx.save(broken, root / "broken.onnx")
    return root / "fp32.onnx", q, root / "broken.onnx"


def mis_scale(model: onnx.ModelProto, tensor: str, factor: float = 100.0) -> None:
    init = next(i for i in model.graph.initializer if i.name == f"{tensor}/scale")
    value = onnx.numpy_helper.to_array(init) * np.float32(factor)
    init.CopyFrom(onnx.numpy_helper.from_array(value.astype(np.float32), init.name))


def test_error_stats_by_hand():
    s = error_stats(np.array([1.0, -2.0, 2.0]), np.array([1.0, -2.0, 3.0]))
    assert s["max_abs"] == 1.0 and s["mean_abs"] == pytest.approx(1 / 3) and s["median_abs"] == 0
    assert s["max_rel"] == pytest.approx(0.5)
    assert s["sqnr_db"] == pytest.approx(10 * math.log10(9.0))  # signal 1+4+4, noise 1
    assert s["cosine"] == pytest.approx(11 / (3 * math.sqrt(14)))


def test_identical_models_pass_with_infinite_sqnr(models):
    fp32, _, _ = models
    result = compare(fp32, fp32, samples=4, batch_size=2, atol=0.0, rtol=0.0)
    (out,) = result.outputs
    assert result.passed and out.tolerance_ok and out.sqnr_ok
    assert out.sqnr_db == math.inf and out.max_abs == 0.0 and out.cosine == 1.0
    assert result.samples == 4 and result.iterations == 2


def test_quantized_passes_and_mis_scaled_fails(models):
    fp32, q, broken = models
    good = compare(fp32, q, samples=8, sqnr_min=15.0)
    bad = compare(fp32, broken, samples=8, sqnr_min=15.0)
    assert good.passed and good.outputs[0].sqnr_db > 15.0
    assert not bad.passed and bad.outputs[0].sqnr_db < good.outputs[0].sqnr_db - 10
    tight = compare(fp32, q, samples=8, atol=1e-6, rtol=0.0, sqnr_min=None)
    assert tight.outputs[0].tolerance_ok is False and not tight.passed


def test_cli_exit_codes(models, tmp_path):
    from onnxvq.cli.validate import register

    fp32, q, broken = models
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    ok = runner.invoke(app, ["compare", str(fp32), str(q), "--samples", "8", "--sqnr-min", "15"])
    assert ok.exit_code == 0, ok.output
    assert "PASS" in ok.output
    bad = runner.invoke(app, ["compare", str(fp32), str(broken), "--samples", "8",
                              "--sqnr-min", "15"])
    assert bad.exit_code == 1 and "FAIL" in bad.output
    missing = runner.invoke(app, ["compare", str(fp32), str(tmp_path / "nope.onnx")])
    assert missing.exit_code == 2  # UsageError: no such file


def test_saved_files_load_with_polygraphy(models, tmp_path):
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    fp32, q, _ = models
    result = compare(fp32, q, samples=6, batch_size=3, save_inputs=tmp_path / "i.json",
                     save_outputs=tmp_path / "o.json")
    inputs = load_json(str(tmp_path / "i.json"))
    assert len(inputs) == 2 and inputs[0]["input"].shape == (3, 3, 32, 32)
    outputs = RunResults.load(str(tmp_path / "o.json"))
    assert list(outputs.keys()) == ["onnxrt-fp32"]
    from onnxvq.core.runtime import make_session

    sess = make_session(onnx.load(fp32))
    expected = sess.run(None, {"input": inputs[1]["input"]})[0]
    np.testing.assert_array_equal(outputs["onnxrt-fp32"][1]["logits"], expected)
    assert result.saved == {"inputs": str(tmp_path / "i.json"),
                            "outputs": str(tmp_path / "o.json")}


@pytest.mark.parametrize("which, ok", [("q", True), ("broken", False)])
def test_polygraphy_cli_reruns_saved_comparison(models, tmp_path, which, ok):
    exe = shutil.which("polygraphy") or str(Path(sys.executable).parent / "polygraphy")
    if not Path(exe).exists():
        pytest.skip("polygraphy CLI not installed")
    fp32, q, broken = models
    compare(fp32, q, samples=4, batch_size=4, save_inputs=tmp_path / "i.json",
            save_outputs=tmp_path / "o.json")
    model = q if which == "q" else broken
    run = subprocess.run([exe, "run", str(model), "--onnxrt", "--load-inputs",
                          str(tmp_path / "i.json"), "--load-outputs", str(tmp_path / "o.json"),
                          "--atol", "0.5", "--rtol", "0", "--check-error-stat", "median"],
                         capture_output=True, text=True, timeout=120)
    assert (run.returncode == 0) == ok, run.stdout[-2000:] + run.stderr[-2000:]
