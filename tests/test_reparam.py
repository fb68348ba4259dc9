"""RepQ-ViT reparameterisation: the folded graph is the FP32 function, and its per-tensor codes
are the per-channel codes of the original activation."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxvq.calibrate.channels import ChannelHistogram, channel_qparams
from onnxvq.calibrate.quant import qrange
from onnxvq.core.pipeline import PassContext, Pipeline
from onnxvq.core.runtime import make_session
from onnxvq.passes.channel_fold import reparam_factors
from onnxvq.passes.pipelines import REPARAMETERIZE
from onnxvq.passes.reparameterize_layernorm import ReparameterizeLayerNorm

C, T = 16, 5


def _init(name, value):
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _model() -> onnx.ModelProto:
    """x -> LN -> {MatMul+Add (fc), Transpose->MatMul (no bias), residual Add, Gather->Gemm}
    and fc -> Relu -> MatMul (fc2)."""
    rng = np.random.default_rng(0)
    w = lambda *s: rng.standard_normal(s) * 0.3  # noqa: E731
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g", "b"], ["ln"], name="ln", axis=-1),
        helper.make_node("MatMul", ["ln", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["h1"], name="fc1_bias"),
        helper.make_node("Relu", ["h1"], ["a"], name="act"),
        helper.make_node("MatMul", ["a", "w2"], ["y1"], name="fc2"),
        helper.make_node("Transpose", ["ln"], ["lt"], name="tr", perm=[1, 0, 2]),
        helper.make_node("MatMul", ["lt", "w3"], ["y2"], name="qkv"),
        helper.make_node("Add", ["ln", "x"], ["y3"], name="residual"),
        helper.make_node("Gather", ["ln", "i0"], ["cls"], name="cls", axis=1),
        helper.make_node("Gemm", ["cls", "wh", "bh"], ["y4"], name="head", transB=1),
    ]
    inits = [_init("g", 1 + w(C)), _init("b", w(C)), _init("w1", w(C, 24)), _init("b1", w(24)),
             _init("w2", w(24, 8)), _init("w3", w(C, 12)), _init("wh", w(4, C)),
             _init("bh", w(4)), numpy_helper.from_array(np.array(0, np.int64), "i0")]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
            for n in ("y1", "y2", "y3", "y4")]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", T, C])], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model)


def _inputs(seed=1, n=64):
    rng = np.random.default_rng(seed)
    # channels of very different spread: what makes per-tensor quantization of LN outputs bad
    return (rng.standard_normal((n, T, C)) * np.geomspace(0.1, 10, C)).astype(np.float32)


def _values(model, names, x):
    from onnxvq.calibrate.collect import expose

    return make_session(expose(model, names)).run(names, {"x": x})


def _codes(v, scale, zp, bits=4):
    return np.clip(np.round(v.astype(np.float64) / scale) + zp, *qrange(bits, False))


@pytest.fixture(scope="module")
def folded():
    model, x = _model(), _inputs()
    ln, act = _values(model, ["ln", "a"], x)
    qp_ln = channel_qparams(ln.reshape(-1, C).min(0), ln.reshape(-1, C).max(0), 4)
    qp_act = channel_qparams(act.reshape(-1, 24).min(0), act.reshape(-1, 24).max(0), 4)
    ctx = PassContext(channel_qparams={"ln": qp_ln, "a": qp_act})
    out, report = REPARAMETERIZE.run(model, ctx=ctx, numeric="end", atol=1e-4)
    return model, out, report, (qp_ln, qp_act), x, (ln, act)


def test_folded_graph_is_fp32_equivalent(folded):
    model, out, report, _, x, _ = folded
    ref, got = make_session(model).run(None, {"x": x}), make_session(out).run(None, {"x": x})
    for a, b in zip(ref, got, strict=True):
        assert np.max(np.abs(a - b)) < 1e-4
    ln_result, act_result = report.passes
    assert (ln_result.applied, ln_result.counts) == (1, {"linears": 3, "compensated": 1})
    assert (act_result.applied, act_result.counts["linears"]) == (1, 1)


def test_per_tensor_codes_equal_per_channel_codes(folded):
    _, out, report, (qp_ln, qp_act), x, (ln, act) = folded
    (rp_ln,), (rp_act,) = (p.records for p in report.passes)
    assert (rp_ln.node, rp_act.node) == ("ln", "a")
    assert sorted(rp_ln.tensors) == ["cls", "ln", "lt"]
    assert (sorted(rp_ln.linears), rp_ln.compensated) == (["fc1", "head", "qkv"], 1)
    (scaled,) = rp_act.tensors
    ln2, lt2, act2 = _values(out, ["ln", "lt", scaled], x)
    for before, qp, after, rp in ((ln, qp_ln, ln2, rp_ln), (act, qp_act, act2, rp_act)):
        want = _codes(before, qp[0], qp[1])
        got = _codes(after, rp.scale, rp.zero_point)
        assert np.abs(got - want).max() <= 1  # float rounding at a .5 boundary at most
        assert np.mean(got != want) < 1e-3
        assert len(np.unique(want)) > 8  # the codes are not trivially all equal
    np.testing.assert_array_equal(_codes(lt2, rp_ln.scale, rp_ln.zero_point),
                                  _codes(ln2, rp_ln.scale, rp_ln.zero_point).transpose(1, 0, 2))


def test_factors():
    rp = reparam_factors(np.array([0.5, 1.0, 1.5]), np.array([3, 8, 7]))
    np.testing.assert_allclose(rp.r, [0.5, 1.0, 1.5])
    assert (rp.scale, rp.zero_point) == (1.0, 6)
    np.testing.assert_allclose(rp.b, [3.0, -2.0, -1.0])


def test_refuses_other_consumers_without_compensation():
    model, x = _model(), _inputs()
    (ln,) = _values(model, ["ln"], x)
    qp = channel_qparams(ln.reshape(-1, C).min(0), ln.reshape(-1, C).max(0), 4)
    strict = Pipeline((ReparameterizeLayerNorm(compensate=False),))
    _, report = strict.run(model, ctx=PassContext(channel_qparams={"ln": qp}), numeric="end")
    assert report.passes[0].applied == 0
    assert report.passes[0].refused == [
        ("ln", "LayerNorm output also feeds Add (not a foldable Linear)")]
    wrong = PassContext(channel_qparams={"ln": (qp[0][:4], qp[1][:4])})
    _, report = strict.run(model, ctx=wrong, numeric="end")
    assert report.passes[0].refused == [("ln", "16 channels but 4 calibrated")]


def test_channel_search_beats_minmax_on_heavy_tails():
    rng = np.random.default_rng(3)
    x = rng.laplace(size=(20000, 6)) * np.arange(1, 7)
    hist = ChannelHistogram("x", x.min(0), x.max(0))
    for chunk in np.array_split(x, 5):
        hist.update(chunk)
    s, z = hist.search(4)
    s0, z0 = channel_qparams(x.min(0), x.max(0), 4)

    def err(s, z):
        return (((_codes(x, s, z) - z) * s - x) ** 2).sum(0)

    assert (err(s, z) < 0.5 * err(s0, z0)).all()


def test_quantize_with_reparam_uses_the_folded_per_tensor_quantizers():
    from onnxvq.core.config import QuantConfig
    from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
    from onnxvq.quantizer.run import quantize

    tiny = build_tiny_vit(TinyViTConfig(depth=2))
    cfg = QuantConfig(calib_size=8, batch_size=4, a_bits=6, reparam=True, reparam_mlp=True)
    result = quantize(tiny, None, cfg)
    by_id = {p.pass_id: p for p in result.passes}
    ln, act = by_id["reparameterize-layernorm"], by_id["reparameterize-activation"]
    assert (ln.applied, ln.refused) == (5, [])  # 2 blocks x 2 + the final norm
    assert act.applied == 2
    records = [r for p in (ln, act) for r in p.records]
    tensors = [t for r in records for t in r.tensors]
    assert len(tensors) == 7  # qkv x 2, fc1 x 2, head (via the cls Gather), fc2 x 2
    for r in records:
        for t in r.tensors:
            q = result.activation_qparams[t]
            assert (q.scale, q.zero_point, q.bits) == (r.scale, r.zero_point, 6)
    sess = make_session(result.model)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert np.isfinite(sess.run(None, {sess.get_inputs()[0].name: x})[0]).all()
