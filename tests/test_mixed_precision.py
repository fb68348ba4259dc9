"""Accuracy-aware mixed precision (`target_sqnr` / `max_drop`): the sensitive Linear is raised."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import numpy_helper

import onnxvq.api as api
from onnxvq.core.config import QuantConfig
from onnxvq.core.errors import UsageError
from onnxvq.core.metrics import error_stats

SENSITIVE = "MatMul_11"  # block 1 fc1 of the tiny ViT


@pytest.fixture(scope="module")
def sensitive():
    """A tiny ViT whose block-1 fc1 breaks at 4 bits: its input channel 0 scaled down 50x in the
    LayerNorm and the matching weight row up 50x (the FP32 function is the same), so each
    output column's 4-bit scale is spent on one weight and the others round to 0."""
    from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit

    model = build_tiny_vit(TinyViTConfig(depth=2))
    inits = {t.name: t for t in model.graph.initializer}
    for name, factor in (("blocks.1.norm2.weight", 1 / 50), ("blocks.1.norm2.bias", 1 / 50),
                         ("blocks.1.mlp.fc1.weight", 50.0)):
        a = numpy_helper.to_array(inits[name]).copy()
        a[0] *= factor
        inits[name].CopyFrom(numpy_helper.from_array(a, name))
    return model


BASE = {"w_bits": 4, "a_bits": 8, "calib_size": 16, "batch_size": 8}


def test_the_sensitive_linear_is_the_one_raised(sensitive, tmp_path):
    result = api.quantize(sensitive, None, QuantConfig(**BASE, target_sqnr=8.0))
    mp = result.mixed_precision
    assert mp["steps"][0]["sqnr_db"] < 6.0  # plain W4/A8 misses the target
    assert mp["ranking"][0]["node"] == SENSITIVE and mp["raised"] == [SENSITIVE]
    assert mp["layers"][SENSITIVE] == 8 and mp["met"] and mp["sqnr_db"] >= 8.0
    bits = {w.node: w.bits for w in result.weight_qparams.values()}
    assert bits[SENSITIVE] == 8 and sorted(set(bits.values())) == [4, 8]
    assert sum(b == 8 for b in bits.values()) == 1
    # the target holds on fresh inputs too (not only on the held-out check samples)
    from onnxvq.core.runtime import make_session, random_inputs

    feeds = random_inputs(make_session(sensitive), batch=16, seed=11)
    ref = make_session(sensitive).run(None, feeds)[0]
    got = make_session(result.model).run(None, feeds)[0]
    assert error_stats(ref, got)["sqnr_db"] > 7.0
    side = json.loads(json.dumps(result.sidecar()))
    assert side["mixed_precision"]["layers"][SENSITIVE] == 8
    assert side["config"]["target_sqnr"] == 8.0
    from onnxvq.verify.report import _mixed_section

    page = "".join(_mixed_section(side["mixed_precision"]))
    assert f"<td>{SENSITIVE}</td><td>8</td>" in page and "1 Linears raised" in page


def test_nuclear_prior_and_float_fallback(sensitive):
    """PTQ-for-ViT's nuclear-norm ranking needs no quantized runs; a target that 8 bits cannot
    reach (the untrained model's W8/A8 gives ~20 dB) keeps Linears float."""
    result = api.quantize(sensitive, None,
                          QuantConfig(**BASE, target_sqnr=24.0, rank_by="nuclear"))
    mp = result.mixed_precision
    assert len(mp["ranking"]) == 10 and all(r["score"] > 0 for r in mp["ranking"])
    assert [s["raised"] for s in mp["steps"]][:3] == ["none", "8", "float"]
    assert mp["met"] and "float" in mp["layers"].values()
    assert any("matches --skip" in why for _, why in result.plan.skipped)


@pytest.mark.parametrize(("flags", "message"), [
    ({"target_sqnr": -1}, "target-sqnr"), ({"max_drop": 120}, "max-drop"),
    ({"rank_by": "hessian"}, "unknown rank_by"), ({"layer_bits": (("x", 9),)}, "layer_bits"),
])
def test_bad_targets(flags, message):
    with pytest.raises(UsageError, match=message):
        QuantConfig(**flags)


def test_layer_bits_raise_weights_and_input(sensitive):
    from onnxvq.quantizer.run import quantize

    result = quantize(sensitive, None, QuantConfig(**BASE, layer_bits=((SENSITIVE, 8),)))
    site = next(s for s in result.plan.activations if SENSITIVE in s.consumers)
    assert site.bits == 8 and result.weight_qparams[SENSITIVE].bits == 8
    assert np.isclose(result.activation_qparams[site.tensor].bits, 8)


def test_attention_units_at_4_bit_activations(sensitive):
    from onnxvq.quantizer.run import quantize
    from onnxvq.verify.mixed import units

    cfg = QuantConfig(**{**BASE, "a_bits": 4})
    result = quantize(sensitive, None, cfg)
    found = {u.name: u for u in units(result)}
    att = result.structure.attentions[1]
    assert len(found) == 10 + 2 and found[att.scores_matmul].raise_nodes == (
        att.scores_matmul, att.context_matmul)
    raised = quantize(sensitive, None, cfg.with_(layer_bits=((att.scores_matmul, 8),
                                                             (att.context_matmul, 8))))
    bits = {c: s.bits for s in raised.plan.activations for c in s.consumers}
    assert bits[att.scores_matmul] == bits[att.context_matmul] == 8
    assert bits[result.structure.attentions[0].scores_matmul] == 4
