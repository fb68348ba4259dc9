"""One data spec on every command: the sidecar records the preprocessing, validation commands on a
quantized 256-px model start from it, explicit flags override it, and every `--json` parses."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from onnxvq.calibrate.spec import DataSpec, recorded_preprocess
from onnxvq.cli.app import app
from onnxvq.core.errors import UsageError
from onnxvq.core.graph import save_model
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def px256(tmp_path_factory):
    """A 256-px tiny ViT quantized from an image folder with --size 256, and that folder."""
    root = tmp_path_factory.mktemp("px256")
    images = root / "images"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (images / cls).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (300, 280, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(images / cls / f"{i}.png")
    fp32 = save_model(build_tiny_vit(TinyViTConfig(image=256, patch=32, dim=32, heads=2,
                                                   classes=2)), root / "v.onnx")
    q = root / "v.int8.onnx"
    done = run("quantize", fp32, "-o", q, "--data", images, "--size", "256", "--samples", "4",
               "--batch-size", "2", "--seed", "3", "--json")
    assert done.exit_code == 0, done.output
    return fp32, q, images, json.loads(done.stdout)


def test_sidecar_records_the_data_spec(px256):
    _, q, images, out = px256
    cal = json.loads(q.with_suffix(".json").read_text())["calibration"]
    assert cal["source"] == str(images) and cal["samples"] == 4 and cal["seed"] == 3
    assert (cal["preprocess"]["crop"], cal["preprocess"]["size"]) == (256, 284)  # 256 / 0.9
    assert out["calibration"] == cal and out["model"] == str(q)
    assert recorded_preprocess(q).crop == 256


@pytest.mark.parametrize("command", ["compare", "sensitivity", "report", "eval"])
def test_validation_commands_take_the_recorded_preprocessing(px256, tmp_path, command):
    fp32, q, images, _ = px256
    models = [q] if command == "eval" else [fp32, q]
    extra = ["-o", tmp_path / "r.html"] if command == "report" else []
    done = run(command, *models, "--data", images, "--samples", "2", "--batch-size", "2",
               *extra, "--json")
    assert done.exit_code == 0, done.output
    out = json.loads(done.stdout)
    if command == "compare":
        assert out["samples"] == 2 and out["preprocess"]["crop"] == 256
    if command == "eval":
        assert out["images"] == 2 and out["preprocess"]["crop"] == 256
    explicit = run(command, *models, "--data", images, "--preset", "imagenet", "--size", "256",
                   "--samples", "2", *extra)
    assert explicit.exit_code == 0, explicit.output
    # an explicit preprocessing flag overrides the record: 224-px crops do not fit the model
    wrong = run(command, *models, "--data", images, "--size", "224", "--samples", "2", *extra)
    assert wrong.exit_code == 5 and "samples have shape" in wrong.output, wrong.output


def test_seed_changes_the_subsample_and_the_noise():
    from onnxvq.calibrate.data import NoiseSource, strided

    assert strided(10, 5).tolist() == [0, 2, 4, 6, 8]
    shifted = strided(10, 5, seed=7)
    assert shifted.tolist() != [0, 2, 4, 6, 8] and np.all(np.diff(shifted) == 2)
    a, b = (next(NoiseSource([2], 3, seed=s).chunks()) for s in (0, 1))
    assert not np.array_equal(a, b)


def test_data_spec_rejects_bad_values():
    with pytest.raises(UsageError, match="samples must be a positive integer"):
        DataSpec(samples=0)
    with pytest.raises(UsageError, match="unknown preset 'coco'"):
        DataSpec(preset="coco")
    assert DataSpec.coerce("x", samples=3, seed=None) == DataSpec(source="x", samples=3)


def test_preset_crop_follows_a_fixed_input_size(px256, tmp_path):
    """Without --size, the 224-px imagenet preset crops at the model's fixed 256 px (resize
    284 = 256 / 0.9, as --size 256 gives) and says so; --size still wins and still fails."""
    fp32, _, images, _ = px256
    q = tmp_path / "q.onnx"
    done = run("quantize", fp32, "-o", q, "--data", images, "--preset", "imagenet",
               "--samples", "2", "--batch-size", "2")
    assert done.exit_code == 0, done.output
    cal = json.loads(q.with_suffix(".json").read_text())["calibration"]
    assert (cal["preprocess"]["crop"], cal["preprocess"]["size"]) == (256, 284)
    wrong = run("quantize", fp32, "-o", tmp_path / "w.onnx", "--data", images, "--size", "224",
                "--samples", "2")
    assert wrong.exit_code == 5 and "samples have shape" in wrong.output, wrong.output
    assert not (tmp_path / "w.onnx").exists()


def test_fitted_leaves_symbolic_and_matching_inputs_alone():
    dynamic = build_tiny_vit(TinyViTConfig(image=224, patch=32, dim=32, heads=2, classes=2))
    dims = dynamic.graph.input[0].type.tensor_type.shape.dim
    spec = DataSpec(source="x", preset="imagenet")
    assert spec.fitted(dynamic) is spec  # 224 = the preset's crop
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    assert spec.fitted(dynamic) is spec  # symbolic: the preset decides
    fixed = build_tiny_vit(TinyViTConfig(image=256, patch=32, dim=32, heads=2, classes=2))
    assert spec.fitted(fixed).size == 256
    assert DataSpec(source="x", size=240).fitted(fixed).size == 240  # explicit size wins
