"""replace-softmax: attention Softmax and A·V -> LogIntSoftmax and LogIntMatMul (FQ-ViT LIS)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from passtools import cosine, ops, quant_context, reasons, run_pass

from onnxvq.core.config import LIS_BASES as LIS_STEPS
from onnxvq.core.config import QuantConfig
from onnxvq.core.params import FqParams, QuantPlan, SoftmaxQuant
from onnxvq.core.pipeline import PassContext
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.passes import replace_softmax
from onnxvq.passes.replace_softmax import ReplaceSoftmax, probs_path
from onnxvq.plugins.reference import softmax_constants
from onnxvq.recognise.structure import Attention, ViTStructure


def test_tiny_vit_attentions_become_log_int():
    canonical, ctx = quant_context(build_tiny_vit(TinyViTConfig()),
                                   QuantConfig(lis=True, calib_size=16))
    out, res, _ = run_pass(ReplaceSoftmax(), canonical, ctx, numeric="none")
    assert res.applied == len(ctx.plan.softmaxes) == 2 and res.refused == []
    after = ops(out)
    assert after["LogIntSoftmax"] == after["LogIntMatMul"] == 2
    assert after["Softmax"] == 0 and after["MatMul"] == ops(canonical)["MatMul"] - 2
    assert after["QuantizeLinear"] == 4  # scores and values of each attention
    assert cosine(canonical, out, batch=32) > 0.95


def test_lis_base_sqrt2_emits_half_octave_codes():
    """--lis-base sqrt2: both nodes carry octave_steps=2, the Mul rescales by 2^-acc_shift, and
    the half-octave codes track the float attention more closely than log2 codes do."""
    cos = {}
    for base in ("2", "sqrt2"):
        canonical, ctx = quant_context(build_tiny_vit(TinyViTConfig()),
                                       QuantConfig(lis=True, lis_base=base, calib_size=16))
        out, res, _ = run_pass(ReplaceSoftmax(), canonical, ctx, numeric="none")
        assert res.applied == 2
        steps = {n.op_type: {a.name: a.i for a in n.attribute}.get("octave_steps")
                 for n in out.graph.node if n.domain == "com.onnxvq"}
        assert steps == {"LogIntSoftmax": LIS_STEPS[base], "LogIntMatMul": LIS_STEPS[base]}
        cos[base] = cosine(canonical, out, batch=32)
    assert 1 - cos["sqrt2"] < 0.5 * (1 - cos["2"]), cos  # measured: 0.0028 vs 0.0093


def _graph(axis=-1, v_shape=(1, 2, 4, 8), second_reader=False) -> gs.Graph:
    x = gs.Variable("x", np.float32, [1, 2, 4, 4])
    v = gs.Variable("v", np.float32, list(v_shape) if v_shape else None)
    p, y = gs.Variable("p", np.float32, [1, 2, 4, 4]), gs.Variable("y", np.float32, [1, 2, 4, 8])
    nodes = [gs.Node("Softmax", name="sm", attrs={"axis": axis}, inputs=[x], outputs=[p]),
             gs.Node("MatMul", name="av", inputs=[p, v], outputs=[y])]
    outputs = [y]
    if second_reader:
        other = gs.Variable("p_other", np.float32, [1, 2, 4, 4])
        nodes.append(gs.Node("Relu", name="other", inputs=[p], outputs=[other]))
        outputs.append(other)
    return gs.Graph(nodes=nodes, inputs=[x, v], outputs=outputs, opset=17)


def _structure(context: str = "av") -> ViTStructure:
    att = Attention("sm", "qk", context, "x", "p", "q", "k", "v", 0.5, "packed", (), None, False,
                    2, 4)
    return ViTStructure(attentions=[att])


Q = SoftmaxQuant("sm", "x", "v", 0.05, "int8", 0.02, 128, "uint8", softmax_constants(0.05, 4))


def _run(graph, q=Q, refused=None, context="av"):
    fq = FqParams({}, {"sm": q} if q else {}, {"sm": refused} if refused else {})
    ctx = PassContext(plan=QuantPlan((), (), (), softmaxes=("sm",)), fq_params=fq,
                      structure=_structure(context))
    return ReplaceSoftmax().run(graph, ctx)


def test_rewrites_the_small_attention():
    graph = _graph()
    res = _run(graph)
    assert res.applied == 1
    assert sorted(n.op for n in graph.nodes) == ["Cast", "LogIntMatMul", "LogIntSoftmax", "Mul",
                                                 "QuantizeLinear", "QuantizeLinear"]


@pytest.mark.parametrize(("graph_kw", "reason"), [
    (dict(axis=1), "Softmax not over the last axis"),
    (dict(v_shape=None), "A·V operands need the same known rank (LogIntMatMul does not broadcast)"),
], ids=["axis", "rank"])
def test_structural_refusals_placement_asks_too(graph_kw, reason):
    graph = _graph(**graph_kw)
    assert replace_softmax.refuse(graph.nodes[0], graph.nodes[1]) == reason
    res = _run(graph)
    assert res.applied == 0 and reasons(res) == [reason]
    assert [n.op for n in graph.nodes] == ["Softmax", "MatMul"]


@pytest.mark.parametrize(("kwargs", "reason"), [
    (dict(context="missing"), "A·V MatMul not found"),
    (dict(q=None), "attention not calibrated"),
    (dict(refused="scores are all NaN"), "scores are all NaN"),
], ids=["no-av", "uncalibrated", "calibration"])
def test_context_refusals(kwargs, reason):
    res = _run(_graph(), **kwargs)
    assert res.applied == 0 and reasons(res) == [reason]


def test_refuses_probs_with_another_reader():
    graph = _graph(second_reader=True)
    res = _run(graph)
    assert reasons(res) == ["Softmax output reaches A·V through other ops or has other consumers"]
    assert probs_path(graph.nodes[0], graph.nodes[1]) is None


def test_placement_refuses_talking_heads_probs():
    """CaiT's talking heads: Transpose -> head-mixing MatMul -> Transpose between the Softmax and
    A·V. LogIntMatMul could not take the mixed values as log codes, so placement (`refuse`) keeps
    that Softmax float and A·V's W8/A8 Q/DQ, instead of the pass refusing after planning."""
    graph = _graph()
    sm, av = graph.nodes
    t1, mixed, t2 = (gs.Variable(n, np.float32, [1, 4, 4, 2]) for n in ("t1", "mixed", "t2"))
    back = gs.Variable("back", np.float32, [1, 2, 4, 4])
    w = gs.Constant("w_heads", np.eye(2, dtype=np.float32)[::-1].copy())
    graph.nodes += [gs.Node("Transpose", name="to_heads_last", attrs={"perm": [0, 2, 3, 1]},
                            inputs=[sm.outputs[0]], outputs=[t1]),
                    gs.Node("MatMul", name="proj_w", inputs=[t1, w], outputs=[mixed]),
                    gs.Node("Transpose", name="to_heads_first", attrs={"perm": [0, 3, 1, 2]},
                            inputs=[mixed], outputs=[back])]
    av.inputs[0] = back
    reason = "Softmax output reaches A·V through other ops or has other consumers"
    assert replace_softmax.refuse(sm, av) == reason
    assert replace_softmax.refuse(*_graph().nodes) is None


def test_probs_path_through_value_preserving_ops():
    graph = _graph()
    sm, av = graph.nodes
    assert probs_path(sm, av) == []
    mid = gs.Variable("p_cast", np.float32, [1, 2, 4, 4])
    cast = gs.Node("Cast", name="cast", attrs={"to": 1}, inputs=[sm.outputs[0]], outputs=[mid])
    av.inputs[0] = mid
    graph.nodes.append(cast)
    assert probs_path(sm, av) == [cast]
