"""insert-activation-qdq: a QuantizeLinear per planned tensor, a DequantizeLinear per consumer."""

from __future__ import annotations

import numpy as np
import pytest
from passtools import cosine, ops, quant_context, run_pass

from onnxvq.core.config import QuantConfig
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.passes.insert_qdq import InsertActivationQDQ


@pytest.mark.parametrize("target", ["ort", "trt"])
def test_tiny_vit_sites(target):
    canonical, ctx = quant_context(build_tiny_vit(TinyViTConfig(qkv="separate")),
                                   QuantConfig(target=target, calib_size=8))
    out, res, _ = run_pass(InsertActivationQDQ(), canonical, ctx, numeric="none")
    sites = ctx.plan.activations
    consumers = sum(len(s.consumers) for s in sites)
    assert res.applied == len(sites) and res.counts["dq"] == consumers
    assert ops(out)["QuantizeLinear"] == len(sites) and ops(out)["DequantizeLinear"] == consumers
    assert consumers == len(sites) + 2 * 2  # with separate q/k/v, each LN-1 output feeds three
    zps = {i.name: i for i in out.graph.initializer if i.name.endswith("/zero_point")}
    want = np.int8 if target == "trt" else np.uint8
    assert {i.data_type for i in zps.values()} == {3 if want == np.int8 else 2}
    assert cosine(canonical, out) > 0.99
