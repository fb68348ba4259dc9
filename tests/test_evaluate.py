"""evaluate: top-1/top-5 and reference agreement on an ImageFolder, and the shared real models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from onnxvq.core.errors import OnnxvqError
from onnxvq.verify.evaluate import evaluate

COLOURS = {"a_red": (250, 5, 5), "b_green": (5, 250, 5), "c_blue": (5, 5, 250)}


def channel_mean_model(order: tuple[int, int, int] = (0, 1, 2)) -> onnx.ModelProto:
    """logits[n, k] = mean of channel order[k]: a pure red image is class 0 with order (0, 1, 2)."""
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gather", ["flat", "order"], ["logits"], axis=1)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor("order", TensorProto.INT64, [3], list(order))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """4 images per class; two red images misfiled under b_green: top-1 is 10/12."""
    root = tmp_path / "val"
    for cls, rgb in COLOURS.items():
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (32, 32), rgb).save(root / cls / f"{i}.png")
    for i in range(2):
        Image.new("RGB", (32, 32), COLOURS["a_red"]).save(root / "b_green" / f"x{i}.png")
    for i in range(2):
        (root / "b_green" / f"{i}.png").unlink()
    return root


def test_top1_top5_and_agreement(folder, tmp_path):
    model = channel_mean_model()
    seen = []
    r = evaluate(model, folder, "cifar10", ref=model, batch_size=5, progress=seen.append)
    assert (r.images, r.classes) == (12, 3)
    assert r.top1 == pytest.approx(10 / 12) and r.top5 == 1.0  # top-5 of 3 classes is all
    assert r.ref_top1 == r.top1 and r.agreement == 1.0
    assert seen == [5, 5, 2]
    swapped = evaluate(model, folder, "cifar10", ref=channel_mean_model((1, 2, 0)))
    assert swapped.agreement == 0.0 and swapped.ref_top1 == 0.0


def test_limit_takes_a_strided_subset(folder):
    r = evaluate(channel_mean_model(), folder, "cifar10", limit=6)
    assert r.images == 6


def test_rejects_flat_folder_and_wrong_size(tmp_path, folder):
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (32, 32)).save(flat / "x.png")
    with pytest.raises(OnnxvqError, match="ImageFolder layout"):
        evaluate(channel_mean_model(), flat, "cifar10")
    with pytest.raises(OnnxvqError, match="samples have shape"):
        evaluate(channel_mean_model(), folder, "imagenet")  # 224 px crops for a 32 px model


def test_cli_eval(folder):
    import typer
    from typer.testing import CliRunner

    from onnxvq.cli.validate import register

    path = folder.parent / "m.onnx"
    onnx.save(channel_mean_model(), path)
    app = typer.Typer()
    register(app)
    out = CliRunner().invoke(app, ["eval", str(path), str(folder), "--preset", "cifar10",
                                   "--ref", str(path)])
    assert out.exit_code == 0, out.output
    assert "83.33 %" in out.output and "100.00 %" in out.output


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("name, preset, top1", [("vit_cifar10.onnx", "cifar10-vit", 0.7030),
                                                ("cct_cifar10.onnx", "cifar10", 0.7840)])
def test_reproduces_shared_models_fp32_top1(shared_data, name, preset, top1):
    r = evaluate(shared_data / "models" / name, shared_data / "cifar10" / "val", preset)
    assert r.images == 2000 and r.classes == 10
    assert r.top1 == pytest.approx(top1, abs=1e-9)
    assert r.top5 > r.top1 + 0.1


@pytest.mark.realdata
def test_shared_vit_subset_agrees_with_itself(shared_data):
    model = onnx.load(shared_data / "models" / "vit_cifar10.onnx")
    r = evaluate(model, shared_data / "cifar10" / "val", "cifar10-vit", ref=model, limit=100)
    assert r.images == 100 and r.agreement == 1.0 and r.ref_top1 == r.top1
    assert 0.5 < r.top1 < 0.9
    assert np.isfinite(r.seconds)
