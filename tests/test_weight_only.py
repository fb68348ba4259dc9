"""Weight-only 4-bit (`weight_only=True`): Linear weights int4 as MatMulNBits, activations float."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from onnxvq.core.config import QuantConfig
from onnxvq.core.errors import UsageError
from onnxvq.core.runtime import make_session, random_inputs
from onnxvq.quantizer.run import quantize


@pytest.fixture(scope="module")
def tiny():
    from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit

    return build_tiny_vit(TinyViTConfig(depth=2))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize(("flags", "message"), [
    ({"pts": True}, "drop pts"), ({"reparam": True}, "drop reparam"),
    ({"a_bits": 4}, "drop a-bits"), ({"target": "trt"}, "for target ort"),
])
def test_activation_settings_contradict_weight_only(flags, message):
    with pytest.raises(UsageError, match=message):
        QuantConfig(weight_only=True, w_bits=4, **flags)


def test_recipe_brings_only_its_weight_parts():
    cfg = QuantConfig(weight_only=True, w_bits=4, recipe="repq")
    assert (cfg.weight_method, cfg.edge_bits, cfg.reparam, cfg.method) == ("gptq", 8, False,
                                                                          "minmax")


def test_weight_only_int4(tiny):
    ref = make_session(tiny)
    feeds = random_inputs(ref, batch=8, seed=5)
    want = ref.run(None, feeds)[0]
    cos = {}
    for method in ("max", "gptq"):
        cfg = QuantConfig(weight_only=True, w_bits=4, weight_method=method, calib_size=16,
                          batch_size=8)
        result = quantize(tiny, None, cfg)
        ops = Counter(n.op_type for n in result.model.graph.node)
        assert ops["MatMulNBits"] == 2 * 4 and ops["QuantizeLinear"] == 0  # no activation Q
        assert result.plan.activations == () and not result.activation_qparams
        assert {w.bits for w in result.weight_qparams.values()} == {4}
        assert any("Linear weights only" in why for _, why in result.plan.skipped)
        cos[method] = _cosines(want, make_session(result.model).run(None, feeds)[0])
    # measured: max 0.960 mean / 0.918 min, gptq 0.980 / 0.944 (untrained tiny ViT, noise inputs)
    assert cos["max"].mean() > 0.94 and cos["gptq"].min() > 0.93
    assert 1 - cos["gptq"].mean() < 0.6 * (1 - cos["max"].mean())  # GPTQ's moments were gathered
