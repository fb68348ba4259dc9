"""log-softmax-qdq: the attention probs' uniform Q/DQ -> log codes in standard ops (--lis-qdq)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from passtools import reasons

from onnxvq.core.config import QuantConfig
from onnxvq.core.edit import dequantize_linear, qparam_constants, quantize_linear
from onnxvq.core.pipeline import PassContext
from onnxvq.core.runtime import make_session
from onnxvq.passes.log_softmax_qdq import LogSoftmaxQDQ
from onnxvq.plugins.reference import decode_log2_codes, max_code
from onnxvq.recognise.structure import Attention, ViTStructure


def _graph(with_qdq: bool = True) -> gs.Graph:
    x = gs.Variable("x", np.float32, [2, 3, 20, 20])
    v = gs.Variable("v", np.float32, [2, 3, 20, 8])
    p, y = gs.Variable("p", np.float32, [2, 3, 20, 20]), gs.Variable("y", np.float32, [2, 3, 20, 8])
    g = gs.Graph(inputs=[x, v], outputs=[y], opset=17)
    g.nodes.append(gs.Node("Softmax", name="sm", attrs={"axis": -1}, inputs=[x], outputs=[p]))
    a = p
    if with_qdq:
        s, z = qparam_constants("probs", 1 / 255, 0, np.uint8)
        a = dequantize_linear(g, quantize_linear(g, p, s, z, name="probs/Q"), s, z,
                              name="probs/DQ")
    g.nodes.append(gs.Node("MatMul", name="av", inputs=[a, v], outputs=[y]))
    return g


def _ctx(cfg: QuantConfig) -> PassContext:
    att = Attention("sm", "qk", "av", "x", "p", "q", "k", "v", 0.5, "packed", (), None, False,
                    3, 8)
    return PassContext(config=cfg, structure=ViTStructure(attentions=[att]))


@pytest.mark.parametrize("base,bits", [("2", 4), ("sqrt2", 4), ("sqrt2", 6)])
def test_probs_get_log_codes_of_their_base(base, bits):
    g = _graph()
    cfg = QuantConfig(lis_qdq=True, lis_base=base, attn_bits=bits)
    res = LogSoftmaxQDQ().run(g, _ctx(cfg))
    assert res.applied == 1
    ops = [n.op for n in g.nodes]
    assert ops.count("QuantizeLinear") == 1 and "Log" in ops and "Exp" in ops
    assert not any(n.domain == "com.onnxvq" for n in g.nodes)
    rng = np.random.default_rng(bits)
    x = rng.normal(0, 3, (2, 3, 20, 20)).astype(np.float32)
    x[0, 0, 0] = 0.0  # all equal: p = 1/20
    x[0, 0, 1] = -100.0
    x[0, 0, 1, 0] = 100.0  # one-hot: exact 1 and exact 0 probabilities
    v = rng.normal(0, 1, (2, 3, 20, 8)).astype(np.float32)
    (got,) = make_session(gs.export_onnx(g), custom_ops=False).run(None, {"x": x, "v": v})
    steps = cfg.lis_octave_steps
    z = np.exp(x - x.max(-1, keepdims=True))
    p = z / z.sum(-1, keepdims=True)
    with np.errstate(divide="ignore"):
        k = np.minimum(np.rint(-steps * np.log2(p.astype(np.float32))), 255)
    codes = np.where(k > max_code(bits), 255, k).astype(np.uint8)
    want = decode_log2_codes(codes, bits, steps) @ v
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_refuses_unquantized_probabilities():
    g = _graph(with_qdq=False)
    res = LogSoftmaxQDQ().run(g, _ctx(QuantConfig(lis_qdq=True)))
    assert res.applied == 0 and reasons(res) == ["attention probabilities are not quantized"]
    assert [n.op for n in g.nodes] == ["Softmax", "MatMul"]


def test_lis_and_lis_qdq_exclude_each_other():
    from onnxvq.core.errors import UsageError

    with pytest.raises(UsageError, match="lis and lis_qdq exclude each other"):
        QuantConfig(lis=True, lis_qdq=True)


def test_tiny_vit_quantizes_without_custom_ops():
    from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
    from onnxvq.quantizer.run import quantize

    model = build_tiny_vit(TinyViTConfig())
    cfg = QuantConfig(lis_qdq=True, lis_base="sqrt2", calib_size=16, batch_size=8)
    result = quantize(model, None, cfg)
    applied = {r.pass_id: r.applied for r in result.passes}
    assert applied["log-softmax-qdq"] == len(result.structure.attentions) == 2
    assert not any(n.domain == "com.onnxvq" for n in result.model.graph.node)
    x = np.random.default_rng(0).normal(0, 1, (8, 3, 32, 32)).astype(np.float32)
    name = result.model.graph.input[0].name
    (q,) = make_session(result.model, custom_ops=False).run(None, {name: x})
    (f,) = make_session(model, custom_ops=False).run(None, {name: x})
    cos = float((q * f).sum() / np.linalg.norm(q) / np.linalg.norm(f))
    assert cos > 0.98, cos
