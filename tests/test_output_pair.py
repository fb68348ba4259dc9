"""The model + sidecar pair, the output checks, the API's argument checks and the warnings."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import onnx
import pytest
from PIL import Image
from typer.testing import CliRunner

import onnxvq
from onnxvq.api import quantize_file
from onnxvq.cli.app import app
from onnxvq.core.config import QuantConfig
from onnxvq.core.errors import CalibrationError, UsageError
from onnxvq.core.files import stale_temps
from onnxvq.core.graph import save_model
from onnxvq.models.tiny_vit import build_tiny_vit
from onnxvq.quantizer.result import model_bytes
from onnxvq.quantizer.run import quantize

FAST = QuantConfig(calib_size=4, batch_size=4)


@pytest.fixture(scope="module")
def result():
    return quantize(build_tiny_vit(), None, FAST)


def test_save_refuses_a_directory_and_the_source(result, tmp_path):
    with pytest.raises(UsageError, match="is a directory"):
        result.save(tmp_path)
    src = save_model(build_tiny_vit(), tmp_path / "m.onnx")
    (tmp_path / "d").mkdir()
    with pytest.raises(UsageError, match="is the input model"):
        result.save(tmp_path / "d" / ".." / "m.onnx", source=src)
    from_file = quantize(src, None, FAST)
    with pytest.raises(UsageError, match="is the input model"):
        from_file.save(src)  # the result remembers where it came from
    assert onnx.load(src).graph.node[0].op_type != "QuantizeLinear"  # untouched


def test_pair_written_together_and_stale_temps_cleaned(result, tmp_path):
    out = tmp_path / "q.onnx"
    dead = tmp_path / ".q.onnx.4194000.abc.tmp"  # a pid above pid_max: a killed run's leftover
    live = tmp_path / f".q.onnx.{os.getpid()}.xyz.tmp"  # a concurrent writer (this process)
    dead.write_bytes(b"x")
    live.mkdir()
    assert stale_temps(out) == [dead]
    result.save(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["q.onnx", "q.json", live.name])
    assert json.loads(out.with_suffix(".json").read_text())["config"]["calib_size"] == 4


def test_failed_write_leaves_the_old_pair(result, tmp_path, monkeypatch):
    out = result.save(tmp_path / "q.onnx")
    before = (out.read_bytes(), out.with_suffix(".json").read_text())
    real = os.replace

    def full_disk(src, dst):
        if str(dst).endswith(".json"):  # the new model is written, its sidecar fails to land
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr("onnxvq.quantizer.result.os.replace", full_disk)
    new = quantize(build_tiny_vit(), None, FAST.with_(method="ema"))
    with pytest.raises(UsageError, match="No space left on device"):
        new.save(out)
    assert (out.read_bytes(), out.with_suffix(".json").read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.json", "q.onnx"]  # no temp left


def test_external_data_moves_with_the_pair(result, tmp_path):
    import dataclasses

    # a result quantized from a model over 2 GB is written with external data, as it came
    out = dataclasses.replace(result, external_data=True).save(tmp_path / "q.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.json", "q.onnx", "q.onnx.data"]
    assert model_bytes(out) == out.stat().st_size + (tmp_path / "q.onnx.data").stat().st_size
    assert model_bytes(out) > 2 * out.stat().st_size  # most weight bytes are in the .data file
    from onnxvq.core.runtime import make_session

    make_session(str(out))  # loads, external data found


def test_output_checked_before_calibration(tmp_path):
    src = save_model(build_tiny_vit(), tmp_path / "m.onnx")
    (tmp_path / "empty").mkdir()  # calibrating on it would be a CalibrationError
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="is not a folder"):
        quantize_file(src, tmp_path / "file" / "q.onnx", str(tmp_path / "empty"), FAST)
    with pytest.raises(CalibrationError):
        quantize_file(src, tmp_path / "q.onnx", str(tmp_path / "empty"), FAST)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(UsageError, match="cannot write"):
            quantize_file(src, ro / "q.onnx", str(tmp_path / "empty"), FAST)


def test_api_raises_onnxvq_errors(tmp_path):
    m = build_tiny_vit()
    with pytest.raises(UsageError, match="config must be a QuantConfig or a dict"):
        quantize(m, None, "minmax")
    with pytest.raises(UsageError, match="model must be a path or an onnx.ModelProto"):
        quantize(None, None, FAST)
    with pytest.raises(UsageError, match="unknown QuantConfig fields \\['methd'\\]"):
        quantize(m, None, {"methd": "ema"})
    assert quantize(m, None, {"calib_size": 4, "batch_size": 4, "method": "ema"}
                    ).config.method == "ema"
    assert QuantConfig(skip="a*").skip == ("a*",)
    with pytest.raises(UsageError, match="pts must be true or false, got 'no'"):
        QuantConfig(pts="no")
    with pytest.raises(UsageError, match="momentum"):
        QuantConfig(momentum=0)
    with pytest.raises(UsageError, match="calibration data must be a DataSpec, a path or None"):
        quantize(m, 3, FAST)
    assert all(callable(getattr(onnxvq, f)) for f in ("compare", "evaluate", "sensitivity",
                                                      "report", "quantize_file"))


def test_warnings_for_flags_that_did_nothing(tmp_path, caplog):
    src = save_model(build_tiny_vit(), tmp_path / "m.onnx")
    done = CliRunner().invoke(app, ["quantize", str(src), "-o", str(tmp_path / "q.onnx"),
                                    "--samples", "4", "--batch-size", "4", "--momentum", "0.5",
                                    "--skip", "nothing*"])
    assert done.exit_code == 0, done.output
    assert "--momentum 0.5 does nothing with --method minmax" in done.stderr
    assert "--skip 'nothing*' matches no node" in done.stderr
    images = tmp_path / "img"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), i * 40, np.uint8)).save(images / f"{i}.png")
    with caplog.at_level(logging.WARNING):
        r = quantize(src, onnxvq.DataSpec(str(images), preset="cifar10"), FAST)
    assert r.calibration["samples"] == 3
    assert "4 samples requested but the data holds only 3" in caplog.text
