"""replace-layernorm: LayerNormalization -> PTS QuantizeLinear -> IntLayerNorm -> DQ."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from passtools import cosine, ops, quant_context, reasons, run_pass

from onnxvq.core.config import QuantConfig
from onnxvq.core.graph import to_graph
from onnxvq.core.params import FqParams, LayerNormQuant, QuantPlan
from onnxvq.core.pipeline import PassContext
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.passes import replace_layernorm
from onnxvq.passes.replace_layernorm import ReplaceLayerNorm, integer_params
from onnxvq.plugins.reference import MAX_CHANNELS

C = 8


@pytest.fixture(scope="module")
def tiny_pts():
    return quant_context(build_tiny_vit(TinyViTConfig()), QuantConfig(pts=True, calib_size=16))


def test_tiny_vit_layernorms_become_intlayernorm(tiny_pts):
    canonical, ctx = tiny_pts
    out, res, _ = run_pass(ReplaceLayerNorm(), canonical, ctx, numeric="none")
    assert res.applied == len(ctx.plan.layernorms) == 5 and res.refused == []
    after = ops(out)
    assert after["IntLayerNorm"] == 5 and after["LayerNormalization"] == 0
    assert after["QuantizeLinear"] == after["DequantizeLinear"] == 5
    # PTS alone costs the tiny pre-norm ViT this much: its 10-30x outlier channels exceed PTS's
    # 8x span (test_fq: the fully quantized model's bound is the same)
    assert cosine(canonical, out, batch=32) > 0.85


def test_integer_params_fold_the_layernorm(tiny_pts):
    canonical, ctx = tiny_pts
    nodes = {n.name: n for n in to_graph(canonical).nodes}
    name, q = next(iter(ctx.fq_params.layernorms.items()))
    p = integer_params(nodes[name], q)
    assert p.alpha.tolist() == list(q.alpha) and p.zero_point == q.zero_point
    # gamma_int / 2^G is gamma / s_out to within half a unit of 2^-G
    gamma = nodes[name].inputs[1].values.astype(np.float64)
    assert np.abs(p.gamma / 2.0**p.gamma_shift - gamma / q.out_scale).max() <= 2.0 ** -p.gamma_shift


def _graph(axis=-1, gamma="const", beta="const", gamma_size=C, beta_size=C) -> gs.Graph:
    x, y = gs.Variable("x", np.float32, [1, 4, C]), gs.Variable("y", np.float32, [1, 4, C])
    made = []

    def param(name, kind, size):
        if kind == "const":
            return gs.Constant(name, np.linspace(0.5, 1.5, size, dtype=np.float32))
        made.append(gs.Variable(name, np.float32, [size]))
        return made[-1]

    node = gs.Node("LayerNormalization", name="ln", attrs={"axis": axis},
                   inputs=[x, param("g", gamma, gamma_size), param("b", beta, beta_size)],
                   outputs=[y])
    return gs.Graph(nodes=[node], inputs=[x, *made], outputs=[y], opset=17)


def _q(channels=C, out_scale=0.05, out_zp=128) -> LayerNormQuant:
    return LayerNormQuant("ln", "x", "y", 0.1, 128, (1,) * channels, out_scale, out_zp, "uint8")


def _run(graph, q=None, refused=None):
    fq = FqParams({"ln": q} if q else {}, {}, {"ln": refused} if refused else {})
    ctx = PassContext(plan=QuantPlan((), (), (), layernorms=("ln",)), fq_params=fq)
    return ReplaceLayerNorm().run(graph, ctx)


STRUCTURAL = [
    (dict(axis=1), "LayerNorm not over the last axis"),
    (dict(gamma="var"), "LayerNorm gamma is not constant"),
    (dict(beta="var"), "LayerNorm beta is not constant"),
]


@pytest.mark.parametrize(("kwargs", "reason"), STRUCTURAL, ids=[r for _, r in STRUCTURAL])
def test_structural_refusals_placement_asks_too(kwargs, reason):
    graph = _graph(**kwargs)
    assert replace_layernorm.refuse(graph.nodes[0]) == reason
    res = _run(graph, _q())
    assert res.applied == 0 and reasons(res) == [reason]
    assert [n.op for n in graph.nodes] == ["LayerNormalization"]


@pytest.mark.parametrize(("graph_kw", "q", "reason"), [
    ({}, None, "LayerNorm not calibrated"),
    ({}, _q(channels=0), f"IntLayerNorm takes 1..{MAX_CHANNELS} channels, not 0"),
    (dict(gamma_size=6), _q(), f"LayerNorm gamma has 6 values for {C} channels"),
    (dict(beta_size=6), _q(), f"LayerNorm beta has 6 values for {C} channels"),
    ({}, _q(out_zp=300), "output zero point 300 does not fit output dtype 2"),
], ids=["uncalibrated", "channels", "gamma-size", "beta-size", "zero-point"])
def test_calibration_refusals(graph_kw, q, reason):
    res = _run(_graph(**graph_kw), q)
    assert res.applied == 0 and reasons(res) == [reason]


def test_refuses_an_output_scale_too_small_for_int32():
    res = _run(_graph(), _q(out_scale=1e-12))
    assert res.applied == 0 and len(res.refused) == 1
    assert reasons(res)[0].endswith("does not fit int32 at shift 0: the output scale is too small")


def test_the_calibrations_own_refusal_is_passed_on():
    res = _run(_graph(), _q(), refused="LayerNorm input is constant")
    assert reasons(res) == ["LayerNorm input is constant"]


def test_a_layernorm_the_plan_does_not_list_is_not_touched():
    graph = _graph()
    res = ReplaceLayerNorm().run(graph, PassContext(fq_params=FqParams({"ln": _q()})))
    assert res.applied == 0 and res.refused == [] and graph.nodes[0].op == "LayerNormalization"
