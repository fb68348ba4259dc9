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


@pytest.mark.skipif(not VIT.is_file(), reason=f"{VIT} absent")
def test_minmax_ranges_are_numpys_over_the_whole_tensors():
    """Every site's MinMax range from quantize (in-graph reductions at the views' sources, the
    next batch decoded on a thread) is bit-identical to numpy's min/max of the whole tensors from
    a plain session on the canonical model, the same batches."""
    from onnxvq.calibrate.collect import exposed_outputs
    from onnxvq.core.config import QuantConfig
    from onnxvq.core.runtime import output_session
    from onnxvq.quantizer.run import quantize

    prep = resolve_preprocess("cifar10-vit")
    result = quantize(str(VIT), str(CALIB), QuantConfig(calib_size=64), preprocess=prep)
    sites = sorted(t for t in result.activation_qparams if t != "input")
    assert len(sites) > 40
    sess = output_session(result.canonical, exposed_outputs(result.canonical, sites))
    src = open_source(CALIB, prep, 64, ["batch", 3, 32, 32])
    runs = [sess.run(sites, f) for f in batches(src, 16, "input")]
    for i, t in enumerate(sites):
        want = (min(float(r[i].min()) for r in runs), max(float(r[i].max()) for r in runs))
        assert result.activation_qparams[t].range == want, t
