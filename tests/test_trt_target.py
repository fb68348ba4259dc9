"""`--target trt`, checked statically on the CPU: the rules TensorRT 11 needs to build the model."""

from __future__ import annotations

import pytest

from onnxvq.core.config import QuantConfig
from onnxvq.core.runtime import make_session, random_inputs
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.quantizer.run import quantize
from onnxvq.verify.trt_rules import trt_violations

NOISE = dict(calib_size=4, batch_size=2)


@pytest.mark.parametrize("scale", ["mul_scores", "div_scores", "sqrt_qk"])
def test_trt_output_follows_the_rules(scale):
    fp32 = build_tiny_vit(TinyViTConfig(depth=2, scale=scale))
    q = quantize(fp32, None, QuantConfig(target="trt", **NOISE)).model
    assert trt_violations(q) == []
    by_output = {o: n for n in q.graph.node for o in n.output}
    for sm in (n for n in q.graph.node if n.op_type == "Softmax"):
        assert by_output[sm.input[0]].op_type == "MatMul"  # the scale moved onto Q
    a, b = make_session(fp32), make_session(q)
    feeds = random_inputs(a, batch=2)
    assert a.run(None, feeds)[0].shape == b.run(None, feeds)[0].shape


def test_ort_output_breaks_the_rules():
    """The checker is not vacuous: the ORT target's uint8 zero points and scale placement fail."""
    q = quantize(build_tiny_vit(TinyViTConfig(depth=1)), None,
                 QuantConfig(ort_fusions=False, **NOISE)).model  # plain QDQ: the scale Mul stays
    problems = trt_violations(q)
    assert any("not symmetric int8" in p for p in problems)
    assert any("attention scale applied after" in p for p in problems)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_fully_quantized_trt_output_follows_the_rules(norm):
    q = quantize(build_tiny_vit(TinyViTConfig(depth=1, norm=norm)), None,
                 QuantConfig(target="trt", pts=True, lis=True, **NOISE)).model
    custom = [n for n in q.graph.node if n.domain == "com.onnxvq"]
    assert custom
    assert trt_violations(q) == []


# The rules are also asserted on every export of the corpus in
# tests/test_quantize.py::test_corpus_quantizes (target trt).
