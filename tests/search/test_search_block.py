"""Block-wise search calibration (block-mse, similarity): slice, fake-quant, search, deploy."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from onnxvq.calibrate.blockgraph import (
    ActParam,
    QuantBlock,
    block_bounds,
    fake_quant_weight,
    slice_block,
)
from onnxvq.calibrate.collect import expose
from onnxvq.calibrate.quant import fake_quant, qparams_from_range
from onnxvq.calibrate.search_similarity import pearson, ranking_loss
from onnxvq.core.config import QuantConfig
from onnxvq.core.graph import to_graph
from onnxvq.core.runtime import make_session
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.passes.quantize_weights import quantize_weight
from onnxvq.quantizer.placement import plan
from onnxvq.quantizer.run import quantize
from onnxvq.recognise.model import recognise_model

LOW = dict(calib_size=16, batch_size=8, w_bits=4, a_bits=4, search_samples=8)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_vit(TinyViTConfig(depth=2))


@pytest.fixture(scope="module")
def canonical(tiny):
    model = quantize(tiny, None, QuantConfig(calib_size=2, batch_size=2)).canonical
    return model, recognise_model(model)


@pytest.fixture(scope="module")
def noise():
    return np.random.default_rng(1).standard_normal((8, 3, 32, 32)).astype(np.float32)


def _tensors(model, names, x):
    sess = make_session(expose(model, names))
    return dict(zip(names, sess.run(names, {model.graph.input[0].name: x}), strict=True))


def test_sliced_block_reproduces_the_float_block(canonical, noise):
    model, structure = canonical
    for block in structure.blocks:
        b_in, b_out = block_bounds(block, model)
        sliced = slice_block(model, b_in, b_out)
        assert len(sliced.graph.node) < len(model.graph.node) // 2
        ref = _tensors(model, [b_in, b_out], noise)
        got = make_session(sliced).run(None, {b_in: ref[b_in]})[0]
        np.testing.assert_allclose(got, ref[b_out], atol=1e-5, rtol=1e-5)


def test_fake_quant_weight_is_what_the_pass_stores():
    w = np.random.default_rng(0).standard_normal((48, 32)).astype(np.float32)
    scale = (np.abs(w).max(0) * 0.7 / 7).astype(np.float32)  # clipped: some codes saturate
    q, s = quantize_weight(w, 1, 4, scale)
    assert np.abs(q).max() == 7 and (np.abs(w / scale) > 7.5).any()
    np.testing.assert_array_equal(fake_quant_weight(w, 1, 4, scale), q.astype(np.float32) * s)


def test_quant_block_matches_numpy_fake_quant(canonical, noise):
    """With every site's scale fed, the block equals the float block run on numpy fake-quantized
    tensors: check the first linear's input (true 4-bit clip, not the 8-bit container's)."""
    model, structure = canonical
    cfg = QuantConfig(**LOW)
    the_plan = plan(to_graph(model), structure, cfg)
    block = structure.blocks[0]
    b_in, b_out = block_bounds(block, model)
    sliced = slice_block(model, b_in, b_out)
    fc1 = block.mlp.fc1
    site = next(s for s in the_plan.activations if fc1.node in s.consumers)
    act = ActParam(site.tensor, site.consumers, 4, False, False, site.role)
    qb = QuantBlock(sliced, [act], [], extra=[fc1.output])
    ref = _tensors(model, [b_in, site.tensor], noise)
    lo, hi = float(ref[site.tensor].min()) * 0.5, float(ref[site.tensor].max()) * 0.5
    s, z = qparams_from_range(lo, hi, 4)
    out = make_session(qb.model).run([fc1.output], {b_in: ref[b_in], **qb.feeds(
        {site.tensor: (s, z)}, {})})[0]
    xq = fake_quant(ref[site.tensor], s, z, 0, 15).astype(np.float32)
    w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == fc1.weight))
    bias = out - xq @ w.reshape(xq.shape[-1], -1)
    assert np.ptp(bias.reshape(-1, bias.shape[-1]), axis=0).max() < 1e-3  # a per-channel constant


def _rel_error(model, result, x):
    ref = make_session(model).run(None, {model.graph.input[0].name: x})[0]
    sess = make_session(result.model)
    y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return float(np.mean((y - ref) ** 2) / np.mean(ref ** 2))


def test_block_mse_beats_omse_and_deploys_its_scales(tiny, noise):
    omse = quantize(tiny, None, QuantConfig(method="omse", **LOW))
    found = quantize(tiny, None, QuantConfig(method="block-mse", **LOW))
    assert _rel_error(tiny, found, noise) < _rel_error(tiny, omse, noise)
    search = found.calibration["search"]
    assert search["search"] == "block-mse" and len(search["blocks"]) == 4  # stem, 2 blocks, tail
    clipped = [n for n, q in found.weight_qparams.items()
               if not np.allclose(q.scale, omse.weight_qparams[n].scale)]
    assert clipped, "the search chose no weight clipping anywhere"
    changed = [t for t, q in found.activation_qparams.items()
               if q.scale != omse.activation_qparams[t].scale]
    assert changed


def test_search_is_deterministic(tiny):
    a = quantize(tiny, None, QuantConfig(method="block-mse", **LOW))
    b = quantize(tiny, None, QuantConfig(method="block-mse", **LOW))
    assert a.activation_qparams == b.activation_qparams
    assert all(a.weight_qparams[n].scale == b.weight_qparams[n].scale
               for n in a.weight_qparams)


def test_similarity_runs_and_records(tiny, noise):
    found = quantize(tiny, None, QuantConfig(method="similarity", **LOW))
    assert found.calibration["search"]["search"] == "similarity"
    assert _rel_error(tiny, found, noise) < 1.0


def test_pearson_and_ranking_loss():
    a = np.random.default_rng(0).standard_normal((2, 3, 16, 16))
    assert pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert pearson(a, -a) == pytest.approx(-1.0)
    assert ranking_loss(a, a) == 0.0
    assert ranking_loss(a, -a) > 0.3
    assert pearson(np.zeros((2, 4)), np.zeros((2, 4))) == 1.0  # a dead attention is exact


def test_search_combines_with_pts_and_lis(tiny, noise):
    cfg = QuantConfig(method="block-mse", pts=True, lis=True, calib_size=8, batch_size=8,
                      search_samples=8)
    found = quantize(tiny, None, cfg)
    ops = {n.op_type for n in found.model.graph.node}
    # LIS's two ops fused by the ORT lowering, each PTS norm with its residual Add
    assert {"AddIntLayerNorm", "LogIntAttention"} <= ops
    assert found.calibration["search"]["search"] == "block-mse"
    assert _rel_error(tiny, found, noise) < 0.5
