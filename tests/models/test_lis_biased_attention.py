"""Fused --pts --lis attention with constant biases on real exports (the corpus Swin-T, BEiT's
relative positions from models/families/): how many attentions become one biased
LogIntAttention, why every other one is refused, and the fused model bit-identical with the same
QDQ model lowered without fuse-log-int-attention (so its SQNR against FP32 is the unfused one's,
well within 0.1 dB)."""

from __future__ import annotations

import importlib.util
from collections import Counter

import numpy as np
import pytest

from onnxvq.core.config import QuantConfig
from onnxvq.quantizer.run import quantize

_HAVE_TORCH = all(importlib.util.find_spec(m) for m in ("torch", "timm"))
needs_torch = pytest.mark.skipif(not _HAVE_TORCH, reason="needs torch and timm ([export] extra)")
NOISE = dict(calib_size=6, batch_size=2)
_WIDE = "scores are not int8 codes with zero point 0 (int32 wide scores)"
# name -> (fused, {refusal reason: count}); the corpus Swin-T under its own name
EXPECTED = {
    # 7 with relative positions only; the 5 shifted-window ones (their -100 mask) calibrate
    # too wide for int8 scores and keep the unfused int32 lowering
    "swin_tiny_patch4_window7_224": (7, {_WIDE: 5}),
    "beit_tiny": (2, {}),  # relative positions [1, H, N, N]
}


@pytest.mark.corpus
@pytest.mark.slow
@needs_torch
@pytest.mark.parametrize("name", list(EXPECTED))
def test_biased_lis_attentions_fuse_bit_exact(name, family_or_corpus, unfused_fused_sqnr):
    from onnxvq.passes.pipelines import ORT_LOWERING

    path = family_or_corpus(name)
    plain = quantize(str(path), None, QuantConfig(ort_fusions=False, pts=True, lis=True,
                                                  **NOISE)).model
    fused, report = ORT_LOWERING.run(plain, numeric="none")
    result = report.result("fuse-log-int-attention")
    applied, refused = EXPECTED[name]
    assert result.applied == applied
    assert Counter(why for _, why in result.refused) == Counter(refused)
    ops = Counter(n.op_type for n in fused.graph.node)
    assert ops["LogIntAttention"] == applied and ops["LogIntSoftmax"] == sum(refused.values())
    biased = sum(a.name == "bias" for n in fused.graph.node if n.op_type == "LogIntAttention"
                 for a in n.attribute)
    assert biased == applied  # every fused one carried a bias
    unfused_db, fused_db, apart_db = unfused_fused_sqnr(path, plain, fused,
                                                        "fuse-log-int-attention")
    assert apart_db == np.inf and abs(fused_db - unfused_db) <= 0.1  # bit-identical
