"""The shared CIFAR-10 calibration images and the trained ViT (skipped without ../shared/data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxvq.calibrate import PercentileObserver, batches, collect, open_source, resolve_preprocess
from onnxvq.core.runtime import make_session

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
CALIB = DATA / "cifar10" / "calib"
VIT = DATA / "models" / "vit_cifar10.onnx"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not CALIB.is_dir(), reason=f"{CALIB} absent (needs ../shared/data)"),
]


def test_cifar10_calib_folder():
    src = open_source(CALIB, resolve_preprocess("cifar10-vit"), None, ["batch", 3, 32, 32])
    assert len(src) == 1000 and src.classes == CLASSES
    assert np.bincount(src.labels).tolist() == [100] * 10
    shapes, labels = [], []
    for feeds, lab in batches(src, 128, "input", with_labels=True):
        shapes.append(feeds["input"].shape)
        labels.append(lab)
        assert feeds["input"].dtype == np.float32
        assert -2.6 < feeds["input"].min() and feeds["input"].max() < 2.8  # CIFAR-normalised
    assert shapes == [(128, 3, 32, 32)] * 7 + [(104, 3, 32, 32)]
    assert np.concatenate(labels).tolist() == src.labels.tolist()
    sub = open_source(CALIB, resolve_preprocess("cifar10-vit"), 100, ["batch", 3, 32, 32])
    assert np.bincount(sub.labels).tolist() == [10] * 10


@pytest.mark.skipif(not VIT.is_file(), reason=f"{VIT} absent")
def test_collect_on_trained_vit():
    model = onnx.load(str(VIT))
    matmuls = [n.output[0] for n in model.graph.node if n.op_type == "MatMul"]
    logits = model.graph.output[0].name
    src = open_source(CALIB, resolve_preprocess("cifar10-vit"), 200, ["batch", 3, 32, 32])
    obs = collect(model, [*matmuls, logits], batches(src, 50, "input"),
                  lambda n: PercentileObserver(n, tail=1e-5))
    assert len(obs) == len(matmuls) + 1 and all(o.batches == 4 for o in obs.values())
    sess = make_session(model)
    direct = np.concatenate([sess.run([logits], f)[0] for f in batches(src, 50, "input")])
    width = obs[logits].hist.width  # the percentile reads inside the extreme bins
    assert obs[logits].range() == (pytest.approx(direct.min(), abs=width),
                                   pytest.approx(direct.max(), abs=width))
    assert obs[logits].hist.total == direct.size


@pytest.fixture(scope="module")
def quantized64():
    """vit_cifar10 quantized (MinMax) on 64 calibration images, and their 4 batches of 16."""
    from onnxvq.core.config import QuantConfig
    from onnxvq.quantizer.run import quantize

    if not VIT.is_file():
        pytest.skip(f"{VIT} absent")
    prep = resolve_preprocess("cifar10-vit")
    result = quantize(str(VIT), str(CALIB), QuantConfig(calib_size=64), preprocess=prep)
    src = open_source(CALIB, prep, 64, ["batch", 3, 32, 32])
    return result, list(batches(src, 16, "input"))


def _whole_tensor_ranges(result, feeds, lean: bool) -> dict[str, tuple[float, float]]:
    """numpy's min/max of every site's whole tensors from a plain session on the canonical
    model (exposed as outputs), over `feeds`."""
    from onnxvq.calibrate.collect import exposed_outputs
    from onnxvq.core.runtime import output_session

    sites = sorted(t for t in result.activation_qparams if t != "input")
    sess = output_session(result.canonical, exposed_outputs(result.canonical, sites), lean=lean)
    runs = [sess.run(sites, f) for f in feeds]
    return {t: (min(float(r[i].min()) for r in runs), max(float(r[i].max()) for r in runs))
            for i, t in enumerate(sites)}


def test_minmax_ranges_are_numpys_over_the_whole_tensors(quantized64):
    """Every site's MinMax range from quantize (in-graph reductions at the views' sources, the
    next batch decoded on a thread) is bit-identical to numpy's min/max of the whole tensors from
    a plain session on the canonical model with the same ORT optimisations (lean), the same
    batches."""
    result, feeds = quantized64
    want = _whole_tensor_ranges(result, feeds, lean=True)
    assert len(want) > 40
    for t, r in want.items():
        assert result.activation_qparams[t].range == r, t


def test_unfused_layernorms_change_the_ranges_by_float_rounding_only(quantized64):
    """Calibration sessions leave out ORT's SkipLayerNormFusion (core.runtime: its kernel is ~4x
    the Add + LayerNormalization it replaces). Against a session that fuses them, every range
    agrees to 1e-5 relative: the LayerNorms' float rounding, carried downstream. (The first
    LayerNorm fused, the first block's norm1, does move: the reference really is the fused
    graph.)"""
    result, feeds = quantized64
    fused = _whole_tensor_ranges(result, feeds, lean=False)
    moved = []
    for t, r in fused.items():
        got = result.activation_qparams[t].range
        assert got == pytest.approx(r, rel=1e-5, abs=1e-6), t
        if got != r:
            moved.append(t)
    assert "/transformer/layers.0/norm1/LayerNormalization_output_0" in moved
