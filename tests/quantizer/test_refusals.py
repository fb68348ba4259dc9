"""Refusal reasons leave the process: the log (one line each), QuantResult, the sidecar and
inspect's JSON; placement's own reasons."""

from __future__ import annotations

import logging

import pytest

from onnxvq.api import inspect
from onnxvq.core.config import QuantConfig
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.quantizer.run import quantize

NOISE = dict(calib_size=8, batch_size=8)
# the tiny ViT's attention scale is already one Mul: normalize-attention-scale refuses twice
CANONICAL = {"pass": "normalize-attention-scale", "reason": "already canonical"}


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_vit(TinyViTConfig())


def test_refusals_reach_the_result_sidecar_and_log(tiny, caplog):
    with caplog.at_level(logging.INFO, logger="onnxvq.core.pipeline"):
        result = quantize(tiny, None, QuantConfig(**NOISE))
    refused = [{k: r[k] for k in ("pass", "reason")} for r in result.refusals]
    assert refused == [CANONICAL, CANONICAL]
    assert result.sidecar()["refused"] == result.refusals
    assert {r["node"] for r in result.refusals} == {
        n.name for n in tiny.graph.node if n.op_type == "Softmax"}
    lines = [r.getMessage() for r in caplog.records if " refused " in r.getMessage()]
    assert len(lines) == 2 and all(m.endswith(": already canonical") for m in lines)
    assert result.canonicalization.result("normalize-attention-scale").refused


def test_inspect_json_lists_refusals(tiny):
    d = inspect(tiny).to_dict()
    assert [{k: r[k] for k in ("pass", "reason")} for r in d["refusals"]] == [CANONICAL] * 2


def test_placement_keeps_patch_embedding_and_head_float(tiny):
    r = quantize(tiny, None, QuantConfig(quantize_patch_embed=False, quantize_head=False, **NOISE))
    reasons = dict(r.plan.skipped)
    assert sorted(reasons.values()) == ["head kept float", "patch embedding kept float"]
    assert {s.node for s in r.plan.weights}.isdisjoint(reasons)


def test_inspect_json_on_the_command_line(tiny, tmp_path):
    import json

    from typer.testing import CliRunner

    from onnxvq.cli.app import app
    from onnxvq.core.graph import save_model

    path = save_model(tiny, tmp_path / "v.onnx")
    done = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert done.exit_code == 0, done.output
    refusals = json.loads(done.stdout)["refusals"]
    assert [r["reason"] for r in refusals] == ["already canonical"] * 2


def test_unnamed_nodes_are_named_and_quantized(no_block_model):
    """A bare MatMul+Relu with unnamed nodes (as hand-built graphs often are) used to hit an
    IndexError in quantize-weights: the plan addressed both nodes by the same empty name."""
    import onnxvq

    # quantized_linear off: the QDQ MatMul stays visible (on an AMX CPU it is a QuantizedLinear)
    result = onnxvq.quantize(no_block_model, None, onnxvq.QuantConfig(
        calib_size=8, batch_size=4, quantized_linear="off"))
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("DequantizeLinear") >= 2 and "MatMul" in ops
    names = [n.name for n in result.model.graph.node]
    assert all(names) and len(set(names)) == len(names)
