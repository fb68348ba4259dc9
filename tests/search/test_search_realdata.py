"""The search calibrators on the shared CIFAR-10 CCT at W4/A4 (slow; skipped without the data).

Measured with `benchmarks/bench_search.py` (256 calibration images, the 2,000 images of
cifar10/val; results/search.json): OMSE 40.45 %, block-mse 46.30 %, similarity 45.85 %, twin
71.55 %. The test re-measures the ordering for OMSE, block-mse and twin on all 2,000 images (the
calibrations, not the evaluation, are the test's cost); similarity is left to the benchmark: its
two rounds of per-layer search cost about three times block-mse's, and it ties with block-mse.
"""

from __future__ import annotations

import pytest

from onnxvq.calibrate.preprocess import resolve_preprocess
from onnxvq.core.config import QuantConfig
from onnxvq.quantizer.run import quantize
from onnxvq.verify.evaluate import evaluate

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def test_measured_ordering_at_w4a4_on_the_cct(shared_data):
    """twin > block-mse > OMSE, each by its measured margin (less about a point of slack): the best
    beats OMSE by >= 5 points (the acceptance), block-mse does too (46.30 vs 40.45: the candidate
    grid and the walk from OMSE's choice are what this guards; the earlier full scan gave 46.80,
    a coarser grid 44.80)."""
    model = shared_data / "models" / "cct_cifar10.onnx"
    prep = resolve_preprocess("cifar10")
    top1 = {}
    for method in ("omse", "block-mse", "twin"):
        result = quantize(model, shared_data / "cifar10" / "calib",
                          QuantConfig(method=method, w_bits=4, a_bits=4), preprocess=prep)
        top1[method] = evaluate(result.model, shared_data / "cifar10" / "val", prep).top1
    assert top1["omse"] == pytest.approx(0.4045, abs=0.01)
    assert top1["block-mse"] >= top1["omse"] + 0.05
    assert top1["twin"] >= top1["block-mse"] + 0.20
    assert max(top1.values()) >= top1["omse"] + 0.05


def test_search_on_a_tokens_first_export(shared_data):
    """vit_cifar10 (torch.nn.TransformerEncoderLayer) keeps its tokens first, [T, N, C], and its
    attention merges batch and heads ([N·H, T, d]): the search runs the subset unchunked and the
    Fisher probes find each tensor's batch axis (both failed on axis-0 slicing before)."""
    model = shared_data / "models" / "vit_cifar10.onnx"
    prep = resolve_preprocess("cifar10-vit")
    small = dict(w_bits=4, a_bits=4, calib_size=32, search_samples=8)
    for method, fisher in (("block-mse", False), ("twin", True)):
        result = quantize(model, shared_data / "cifar10" / "calib",
                          QuantConfig(method=method, fisher=fisher, **small), preprocess=prep)
        search = result.calibration["search"]
        assert len(search["blocks"]) == 8  # stem, 6 blocks, head
        assert all(0 < b["relative_mse"] < 1 for b in search["blocks"])
        if fisher:  # ReLU MLPs: the twin sites are the 6 attention probabilities (A·V)
            assert len(search["fisher"]) == 6
            assert all(f["raw_mean"] > 0 and f["max_weight"] > f["min_weight"]
                       for f in search["fisher"].values())
        assert evaluate(result.model, shared_data / "cifar10" / "val", prep, limit=200).top1 > 0.5
