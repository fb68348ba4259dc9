"""core.walk.byte_quantizer_refusal: the quantizer check the fused com.onnxvq epilogues share."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from onnxvq.core.walk import byte_quantizer_refusal


def _q(scale, zp) -> gs.Node:
    x, y = gs.Variable("x", np.float32, [2, 4]), gs.Variable("y")
    inputs = [x, scale] + ([zp] if zp is not None else [])
    return gs.Node("QuantizeLinear", inputs=inputs, outputs=[y])


S = gs.Constant("s", np.array(0.1, np.float32))


@pytest.mark.parametrize(("scale", "zp", "subject", "want"), [
    (S, gs.Constant("z", np.array(128, np.uint8)), "GELU output", None),
    (S, gs.Constant("z", np.array(-3, np.int8)), None, None),
    (gs.Constant("s4", np.full(4, 0.1, np.float32)), gs.Constant("z", np.array(0, np.uint8)),
     "GELU output", "per-axis or non-constant quantization of the GELU output"),
    (gs.Variable("sv", np.float32, []), gs.Constant("z", np.array(0, np.uint8)), None,
     "per-axis or non-constant quantization"),
    (S, None, None, "per-axis or non-constant quantization"),
    (S, gs.Constant("z", np.array(0, np.int16)), "LayerNorm output",
     "LayerNorm output quantized to int16, not uint8/int8"),
    (S, gs.Constant("z", np.array(0, np.int16)), None, "quantized to int16, not uint8/int8"),
])
def test_byte_quantizer_refusal(scale, zp, subject, want):
    assert byte_quantizer_refusal(_q(scale, zp), subject) == want
