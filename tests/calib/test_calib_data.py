"""Calibration data: preprocessing values, ImageFolder order and labels, tensor files, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from onnxvq.calibrate import (
    PRESETS,
    ImageFolder,
    NoiseSource,
    Preprocess,
    TensorSource,
    batches,
    load_preprocess_config,
    open_source,
    resolve_preprocess,
)
from onnxvq.calibrate.data import strided
from onnxvq.core.errors import CalibrationError, UsageError

CIFAR = PRESETS["cifar10"]


def _image(path, rgb, size=(32, 32)):
    Image.new("RGB", size, rgb).save(path)


@pytest.fixture
def folder(tmp_path):
    """b/ and a/ (class order must be sorted, not creation order), nested, mixed case suffixes."""
    root = tmp_path / "imgs"
    for cls, names in [("b", ["2.png", "10.PNG"]), ("a", ["x.jpg", "deep/y.JPEG"])]:
        for i, name in enumerate(names):
            path = root / cls / name
            path.parent.mkdir(parents=True, exist_ok=True)
            _image(path, (10 * i, 100, 200))
    (root / "a" / "notes.txt").write_text("not an image")
    return root


def test_constant_image_exact_values():
    pre = Preprocess(size=40, crop=32, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    x = pre(Image.new("RGB", (50, 40), (255, 51, 102)))
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    expect = (np.array([255, 51, 102], np.float32) / np.float32(255) - pre.mean) / pre.std
    np.testing.assert_array_equal(x[:, 7, 11], expect.astype(np.float32))
    nhwc = Preprocess(size=32, crop=32, layout="NHWC")(Image.new("L", (32, 32), 128))
    assert nhwc.shape == (32, 32, 3)


def test_imagenet_preset_matches_torchvision():
    T = pytest.importorskip("torchvision.transforms")
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (300, 420, 3), dtype=np.uint8))
    pre = resolve_preprocess("imagenet")
    ref = T.Compose([T.Resize(248, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                     T.ToTensor(), T.Normalize(pre.mean, pre.std)])(img).numpy()
    np.testing.assert_allclose(pre(img), ref, atol=1e-6)


def test_presets_and_overrides(tmp_path):
    assert (PRESETS["imagenet"].size, PRESETS["imagenet"].crop) == (248, 224)
    assert PRESETS["cifar10-vit"].std == (0.2023, 0.1994, 0.2010)
    assert PRESETS["imagenet-hf"].mean == (0.5, 0.5, 0.5)
    p = resolve_preprocess("imagenet", size=384, mean=(0.1, 0.2, 0.3))
    assert (p.size, p.crop, p.mean) == (426, 384, (0.1, 0.2, 0.3))
    assert resolve_preprocess("imagenet", size=224).size == 248
    with pytest.raises(UsageError, match="unknown preprocessing preset"):
        resolve_preprocess("coco")
    cfg = tmp_path / "pre.json"
    cfg.write_text(json.dumps({"preset": "cifar10", "layout": "NHWC", "std": [1, 1, 1]}))
    loaded = load_preprocess_config(cfg)
    assert loaded.layout == "NHWC" and loaded.std == (1.0, 1.0, 1.0) and loaded.crop == 32
    cfg.write_text(json.dumps({"sizes": 3}))
    with pytest.raises(UsageError, match="unknown preprocessing fields"):
        load_preprocess_config(cfg)
    with pytest.raises(UsageError, match="crop"):
        Preprocess(size=10, crop=32)


def test_image_folder_order_and_labels(folder):
    src = ImageFolder(folder, CIFAR)
    assert [p.as_posix() for p in src.files] == ["a/deep/y.JPEG", "a/x.jpg", "b/10.PNG", "b/2.png"]
    assert src.classes == ["a", "b"] and src.labels.tolist() == [0, 0, 1, 1]
    pairs = list(batches(src, 3, "input", with_labels=True))
    assert [f["input"].shape for f, _ in pairs] == [(3, 3, 32, 32), (1, 3, 32, 32)]
    assert [lab.tolist() for _, lab in pairs] == [[0, 0, 1], [1]]


def test_image_folder_lists_what_rglob_lists(folder, tmp_path):
    """The listing (os.scandir) is Path.rglob's (3.11): links to files followed, a link to a
    folder, a dangling link and a folder named like an image not, sorted by relative path."""
    outside = tmp_path / "outside"
    outside.mkdir()
    _image(outside / "z.png", (1, 2, 3))
    (folder / "b" / "link.png").symlink_to(outside / "z.png")
    (folder / "c").symlink_to(outside, target_is_directory=True)
    (folder / "b" / "dangling.jpg").symlink_to(tmp_path / "missing.jpg")
    (folder / "a" / "dir.png").mkdir()
    want = sorted((p.relative_to(folder) for p in folder.rglob("*")
                   if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.is_file()),
                  key=lambda p: p.as_posix())
    got = ImageFolder(folder, CIFAR).files
    assert got == want
    assert [p.as_posix() for p in got] == ["a/deep/y.JPEG", "a/x.jpg", "b/10.PNG", "b/2.png",
                                           "b/link.png"]


def test_strided_subsample_and_progress(folder):
    assert strided(10, 4).tolist() == [0, 2, 5, 7]
    assert strided(3, None).tolist() == [0, 1, 2]
    src = ImageFolder(folder, CIFAR, limit=2)
    assert [p.as_posix() for p in src.files] == ["a/deep/y.JPEG", "b/10.PNG"]
    seen = []
    list(batches(src, 1, "input", progress=seen.append))
    assert seen == [1, 1]


def test_npy_and_npz_sources(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((70, 3, 4, 4)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    got = np.concatenate([f["x"] for f in batches(TensorSource(tmp_path / "a.npy"), 32, "x")])
    np.testing.assert_array_equal(got, a)
    d = tmp_path / "many"
    d.mkdir()
    np.save(d / "0.npy", a[:30])
    np.savez(d / "1.npz", x=a[30:], labels=np.zeros(40))
    src = open_source(d, CIFAR, 7, ["N", 3, 4, 4])
    got = np.concatenate([f["in"] for f in batches(src, 5, "in")])
    np.testing.assert_array_equal(got, a[strided(70, 7)])


def test_noise_source_is_seeded_and_batching_independent():
    one = np.concatenate([f["x"] for f in batches(NoiseSource((3, 8, 8), 100, seed=3), 7, "x")])
    two = np.concatenate([f["x"] for f in batches(NoiseSource((3, 8, 8), 100, seed=3), 100, "x")])
    assert one.shape == (100, 3, 8, 8)
    np.testing.assert_array_equal(one, two)
    src = open_source(None, CIFAR, None, ["batch", 3, 32, 32])
    assert len(src) == 32 and src.sample_shape == (3, 32, 32)
    with pytest.raises(CalibrationError, match="static input shape"):
        open_source(None, CIFAR, 8, ["batch", 3, "h", "w"])


def test_errors(tmp_path, folder):
    with pytest.raises(CalibrationError, match="not found"):
        open_source(tmp_path / "nope", CIFAR, None, [1, 3, 32, 32])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="empty"):
        open_source(tmp_path / "empty", CIFAR, None, [1, 3, 32, 32])
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("x")
    with pytest.raises(CalibrationError, match="no images"):
        open_source(tmp_path / "txt", CIFAR, None, [1, 3, 32, 32])
    with pytest.raises(CalibrationError, match=r"expects \['N', 3, 64, 64\]"):
        open_source(folder, CIFAR, None, ["N", 3, 64, 64])
    np.save(tmp_path / "rank3.npy", np.zeros((3, 32, 32), np.float32))
    with pytest.raises(CalibrationError, match=r"shape \[32, 32\]"):
        open_source(tmp_path / "rank3.npy", CIFAR, None, ["N", 3, 32, 32])
    (folder / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    src = open_source(folder, CIFAR, None, ["N", 3, 32, 32])
    with pytest.raises(CalibrationError, match="broken.png"):
        list(batches(src, 2, "input"))
