"""fuse-layernorm: the decomposed LayerNorm of opset 13-16 exports becomes LayerNormalization."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from passtools import make_model, ops, reasons, run_pass

from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.passes.fuse_layernorm import FuseLayerNorm

RNG = np.random.default_rng(0)


def _decomposed(axis: int = -1, exponent: float = 2.0, square: str = "pow"):
    sq = (helper.make_node("Pow", ["d", "two"], ["p"]) if square == "pow" else
          helper.make_node("Mul", ["d", "d" if square == "mul" else "x"], ["p"]))
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[axis]),
             helper.make_node("Sub", ["x", "m"], ["d"]), sq,
             helper.make_node("ReduceMean", ["p"], ["v"], axes=[axis]),
             helper.make_node("Add", ["v", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["s"]),
             helper.make_node("Div", ["d", "s"], ["n"]),
             helper.make_node("Mul", ["n", "gamma"], ["ng"]),
             helper.make_node("Add", ["ng", "beta"], ["y"])]
    inits = {"eps": np.float32(1e-5), "two": np.float32(exponent),
             "gamma": RNG.standard_normal(8).astype(np.float32),
             "beta": RNG.standard_normal(8).astype(np.float32)}
    return make_model(nodes, [("x", [2, 4, 8])], [("y", [2, 4, 8])], inits, opset=13)


@pytest.mark.parametrize("square", ["pow", "mul"])
def test_fuses_to_one_layernormalization(square):
    out, res, numeric = run_pass(FuseLayerNorm(), _decomposed(square=square))
    assert res.applied == 1
    assert ops(out) == {"LayerNormalization": 1}
    assert [i.version for i in out.opset_import if i.domain in ("", "ai.onnx")] == [17]
    assert numeric.max_abs_diff <= 1e-5


@pytest.mark.parametrize("opset", [13, 16, 17])
def test_tiny_vit_layernorms_all_fuse(opset):
    cfg = TinyViTConfig(depth=2, layernorm="decomposed", opset=opset)
    out, res, numeric = run_pass(FuseLayerNorm(), build_tiny_vit(cfg))
    assert res.applied == ops(out)["LayerNormalization"] == 2 * cfg.depth + 1
    assert ops(out)["ReduceMean"] == ops(out)["Sqrt"] == ops(out)["Pow"] == 0
    assert numeric.max_abs_diff <= 1e-4


@pytest.mark.parametrize(("kwargs", "reason"), [
    (dict(axis=1), "reduction is not over the last axis only"),
    (dict(exponent=3.0), "Pow exponent is not 2"),
    (dict(square="mul_other"), "squared term is not x*x"),
])
def test_refusals(kwargs, reason):
    model = _decomposed(**kwargs)
    out, res, _ = run_pass(FuseLayerNorm(), model)
    assert res.applied == 0 and reasons(res) == [reason]
    assert ops(out) == ops(model)
