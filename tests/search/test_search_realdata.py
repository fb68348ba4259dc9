"""The search calibrators on the shared CIFAR-10 models at W4/A4 and W6/A6 (slow; skipped without
the data).

Measured with `benchmarks/bench_search.py` (256 calibration images, the 2,000 images of
cifar10/val; results/search.json), top-1 %:

    model        bits  OMSE   block-mse  similarity  twin
    cct_cifar10  4     40.45  46.30      45.85       71.55
    vit_cifar10  4     67.60  67.90      68.90       69.30
    cct_cifar10  6     78.45  78.45      78.25       77.85
    vit_cifar10  6     70.35  70.60      70.70       70.80

The tests re-measure them (the calibrations, not the evaluations, are the cost; each
(model, method, bits) is quantized once per session and shared by the tests that read it). Runs
are deterministic, so the W4/A4 ordering of all four methods is asserted pair by pair with half of
each measured gap as the margin; at W6/A6 the methods are within a point of each other and that
is what is asserted (without similarity, the costly one).
"""

from __future__ import annotations

import pytest

from onnxvq.calibrate.preprocess import resolve_preprocess
from onnxvq.core.config import QuantConfig
from onnxvq.quantizer.run import quantize
from onnxvq.verify.evaluate import evaluate

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

PRESET = {"cct_cifar10": "cifar10", "vit_cifar10": "cifar10-vit"}
METHODS = ("omse", "block-mse", "similarity", "twin")
W6_METHODS = ("omse", "block-mse", "twin")
MEASURED = {  # results/search.json, top-1 on cifar10/val
    ("cct_cifar10", 4): {"omse": .4045, "block-mse": .4630, "similarity": .4585, "twin": .7155},
    # vit_cifar10 at W4/A4 re-measured after multihead-attention-layout (its attentions in
    # timm's batch-first layout, fused): similarity 68.90 -> 68.05 (68.60 with the pass removed,
    # same code otherwise), the others within 0.35 points; results/search.json predates it
    ("vit_cifar10", 4): {"omse": .6780, "block-mse": .6810, "similarity": .6805, "twin": .6895},
    ("cct_cifar10", 6): {"omse": .7845, "block-mse": .7845, "similarity": .7825, "twin": .7785},
    ("vit_cifar10", 6): {"omse": .7035, "block-mse": .7060, "similarity": .7070, "twin": .7080},
}
TIE = 0.003  # 6 of the 2,000 val images
_TOP1: dict[tuple[str, str, int], float] = {}


def top1(data, model: str, method: str, bits: int) -> float:
    """Top-1 on the 2,000 val images of `model` quantized with `method` at W`bits`/A`bits`
    (bench_search's configuration), computed once per session."""
    key = (model, method, bits)
    if key not in _TOP1:
        prep = resolve_preprocess(PRESET[model])
        result = quantize(data / "models" / f"{model}.onnx", data / "cifar10" / "calib",
                          QuantConfig(method=method, w_bits=bits, a_bits=bits), preprocess=prep)
        _TOP1[key] = evaluate(result.model, data / "cifar10" / "val", prep).top1
        print(f"{model} {method} W{bits}/A{bits}: top-1 {_TOP1[key]:.4f}")
    return _TOP1[key]


@pytest.mark.parametrize("model", ["cct_cifar10", "vit_cifar10"])
def test_measured_ordering_at_w4a4(shared_data, model):
    """Every method against every other, in the measured order, each consecutive pair apart by at
    least half its measured gap (a pair measured within TIE is a tie: within 2·TIE); OMSE where it
    was measured. On the CCT the best beats OMSE by
    >= 5 points (the acceptance) and block-mse does too (the candidate grid and the walk from
    OMSE's choice are what that guards: the earlier full scan gave 46.80, a coarser grid 44.80)."""
    measured = MEASURED[model, 4]
    got = {m: top1(shared_data, model, m, 4) for m in METHODS}
    assert got["omse"] == pytest.approx(measured["omse"], abs=0.01)
    order = sorted(METHODS, key=measured.__getitem__)
    for low, high in zip(order, order[1:], strict=False):
        gap = measured[high] - measured[low]
        if gap < TIE:  # measured within a few images of each other: a tie, not an order
            assert abs(got[high] - got[low]) <= 2 * TIE, (low, high, got)
        else:
            assert got[high] - got[low] >= gap / 2, (low, high, got)
    if model == "cct_cifar10":
        assert got["block-mse"] >= got["omse"] + 0.05
        assert max(got.values()) >= got["omse"] + 0.05


@pytest.mark.parametrize("model", ["cct_cifar10", "vit_cifar10"])
def test_methods_agree_within_a_point_at_w6a6(shared_data, model):
    """At W6/A6 every method was within 0.65 points of OMSE: no search may lose more than a
    point to OMSE there, and none gains more than one either. Similarity is left to the
    benchmark at W6/A6 (78.25 / 70.70, within 0.35 of OMSE): its two rounds of per-layer search
    cost about three times block-mse's, more than this test's share of the slow suite."""
    got = {m: top1(shared_data, model, m, 6) for m in W6_METHODS}
    assert got["omse"] == pytest.approx(MEASURED[model, 6]["omse"], abs=0.01)
    for method in W6_METHODS[1:]:
        assert abs(got[method] - got["omse"]) <= 0.01, (method, got)


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
