"""keep_quantized on a model whose Linears write codes (QuantizedLinear*Quantize) reverts them
exactly as on the same model lowered without those fusions."""

from __future__ import annotations

import numpy as np

from onnxvq.core.config import QuantConfig
from onnxvq.core.runtime import make_session, random_inputs
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.quantizer.run import quantize
from onnxvq.verify.sensitivity import canonical_structure, keep_quantized


def test_reverting_a_fused_linear_matches_the_unfused_model():
    fp32 = build_tiny_vit(TinyViTConfig(depth=2))
    canonical, _ = canonical_structure(fp32)
    feeds = random_inputs(make_session(canonical), batch=2, seed=3)
    every = {n.name for n in canonical.graph.node}
    got = {}
    for mode in ("off", "on"):
        q = quantize(fp32, None, QuantConfig(calib_size=8, batch_size=8,
                                             quantized_linear=mode)).model
        ops = {n.op_type for n in q.graph.node}
        assert ("QuantizedLinearGeluQuantize" in ops) == (mode == "on")
        got[mode] = [make_session(keep_quantized(q, canonical, every - drop)).run(None, feeds)[0]
                     for drop in (set(), {"MatMul_5"}, {"MatMul_11"})]
    for off, on in zip(got["off"], got["on"], strict=True):
        np.testing.assert_array_equal(on, off)
    assert np.abs(got["on"][1] - got["on"][0]).max() > 1e-3  # fc1 really went back to FP32
