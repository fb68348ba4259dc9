"""center-attention-probs (target trt): Softmax outputs centred before their symmetric int8 Q/DQ,
the offset restored after A·V from the sum of V. Checked against the float A·V: the centred graph
has about half the quantization error of the uncentred one (a step of range/254, not range/127)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from passtools import make_model, ops, reasons, run_pass

from onnxvq.core.params import ActivationQParams
from onnxvq.core.pipeline import PassContext
from onnxvq.core.runtime import make_session
from onnxvq.passes.center_attention_probs import CenterAttentionProbs

B, H, T, D = 2, 2, 16, 8
V_SCALE = 4.0 / 127


def _model(zp=0, extra_reader=False, v_quantized=True):
    """s -> Softmax -> P -> Q/DQ(1/127, zp) -> MatMul(., V^) -> y; V^ = DQ(Q(v))."""
    nodes = [
        ("Softmax", ["s"], ["p"], {"axis": -1}),
        ("QuantizeLinear", ["p", "ps", "pz"], ["pq"], {}),
        ("DequantizeLinear", ["pq", "ps", "pz"], ["pd"], {}),
        ("QuantizeLinear", ["v", "vs", "vz"], ["vq"], {}),
        ("DequantizeLinear", ["vq", "vs", "vz"], ["vd"], {}),
        ("MatMul", ["pd", "vd" if v_quantized else "v"], ["y"], {}),
    ]
    outputs = [("y", [B, H, T, D])]
    if extra_reader:
        nodes.append(("Neg", ["p"], ["np"], {}))
        outputs.append(("np", [B, H, T, T]))
    from onnx import helper

    made = [helper.make_node(op, i, o, name=f"n{k}", **a) for k, (op, i, o, a) in enumerate(nodes)]
    inits = {"ps": np.float32(1 / 127), "pz": np.int8(zp), "vs": np.float32(V_SCALE),
             "vz": np.int8(0)}
    model = make_model(made, [("s", [B, H, T, T]), ("v", [B, H, T, D])], outputs, inits)
    return onnx.shape_inference.infer_shapes(model)  # T read off V^'s shape


def _ctx(lo=0.0, hi=1.0):
    return PassContext(activation_qparams={
        "p": ActivationQParams(1 / 127, 0, "int8", 8, (lo, hi), "attention")})


def _feeds(seed=0):
    rng = np.random.default_rng(seed)
    return {"s": (rng.standard_normal((B, H, T, T)) * 3).astype(np.float32),
            "v": rng.uniform(-4, 4, (B, H, T, D)).astype(np.float32)}


def _float_av(feeds):
    s = feeds["s"] - feeds["s"].max(-1, keepdims=True)
    p = np.exp(s) / np.exp(s).sum(-1, keepdims=True)
    vd = np.clip(np.round(feeds["v"] / V_SCALE), -128, 127) * V_SCALE
    return p @ vd  # the probabilities unquantized, V as the graph quantizes it


def test_centring_halves_the_probability_error():
    model = _model()
    out, res, _ = run_pass(CenterAttentionProbs(), model, _ctx(), numeric="none")
    assert res.applied == 1 and res.counts == {"matmuls": 1}
    assert ops(out)["MatMul"] == 2 and ops(out)["Add"] == 2  # the shift, c 1ᵀV^ and the restore
    scale = {i.name: i for i in out.graph.initializer}["p/centred_scale"]
    assert np.frombuffer(scale.raw_data, np.float32)[0] == pytest.approx(0.5 / 127)
    errs = []
    for m in (model, out):
        feeds = _feeds()
        y = make_session(m).run(None, feeds)[0]
        errs.append(np.sqrt(((y - _float_av(feeds)) ** 2).mean()))
    assert errs[1] < 0.7 * errs[0], errs


@pytest.mark.parametrize(("kwargs", "reason"), [
    (dict(zp=3), "zero point not 0 (an asymmetric target needs no centring)"),
    (dict(extra_reader=True), "the probabilities are read by more than their quantizer"),
    (dict(v_quantized=False),
     "V of A·V is not a dequantized tensor with a static key count"),
], ids=["asymmetric", "reader", "float-v"])
def test_refusals(kwargs, reason):
    out, res, check = run_pass(CenterAttentionProbs(), _model(**kwargs), _ctx(), atol=0)
    assert res.applied == 0 and reasons(res) == [reason]
    assert check.max_abs_diff == 0
