"""fuse-log-int-attention: each --pts --lis attention of the tiny ViT (Gather and Split head
splits) becomes one LogIntAttention, bit-identical with the unfused lowered graph (kernel and
local function); every refusal has its case."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from passtools import reasons, run_pass

from onnxvq.core.config import QuantConfig
from onnxvq.core.pipeline import Pipeline
from onnxvq.core.runtime import make_session, random_inputs
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.passes.fuse_log_int_attention import FuseLogIntAttention
from onnxvq.passes.pipelines import ORT_LOWERING
from onnxvq.quantizer.run import quantize

NOISE = dict(calib_size=8, batch_size=4)
OTHERS = tuple(p for p in ORT_LOWERING.passes if "attention" not in p.id)


def _plain(**vit) -> onnx.ModelProto:
    fp32 = build_tiny_vit(TinyViTConfig(depth=2, dim=96, heads=3, **vit))
    return quantize(fp32, None, QuantConfig(ort_fusions=False, pts=True, lis=True, **NOISE)).model


def _prepared(plain: onnx.ModelProto) -> onnx.ModelProto:
    """What the pass sees in ORT_LOWERING: the passes before it have run."""
    before = ORT_LOWERING.passes[:[p.id for p in ORT_LOWERING.passes].index(
        "fuse-log-int-attention")]
    return Pipeline(tuple(p for p in before if p.id != "fuse-qlinear-attention")).run(
        plain, numeric="none")[0]


@pytest.fixture(scope="module")
def plain():
    return _plain()


@pytest.mark.parametrize("qkv", ["packed", "packed_split", "separate"])
def test_fused_lowering_bit_identical(plain, qkv):
    """Separate q, k, v projections too (their codes packed by one Concat: the same codes)."""
    model = plain if qkv == "packed" else _plain(qkv=qkv)
    fused, report = ORT_LOWERING.run(model, numeric="none")
    assert report.result("fuse-log-int-attention").applied == 2
    assert report.result("fuse-qlinear-attention").applied == 0
    unfused, _ = Pipeline(OTHERS).run(model, numeric="none")
    ops = Counter(n.op_type for n in fused.graph.node)
    assert ops["LogIntAttention"] == 2 and ops["LogIntSoftmax"] == ops["LogIntMatMul"] == 0
    assert ops["Cast"] == 0 and ops["Transpose"] == Counter(
        n.op_type for n in unfused.graph.node)["Transpose"] - 2 * (4 if qkv == "separate" else 3)
    feeds = random_inputs(make_session(model), batch=4, seed=5)
    want = make_session(unfused).run(None, feeds)[0]
    np.testing.assert_array_equal(make_session(fused).run(None, feeds)[0], want)
    np.testing.assert_array_equal(make_session(fused, custom_ops=False).run(None, feeds)[0], want)


def _edit(model: onnx.ModelProto, how) -> onnx.ModelProto:
    g = gs.import_onnx(model)
    for sm in [n for n in g.nodes if n.op == "LogIntSoftmax"]:
        how(g, sm)
    g.cleanup().toposort()
    return gs.export_onnx(g)


def _wide(g, sm):  # a non-zero score zero point stands for any non-int8-symmetric coding
    q = sm.inputs[0].inputs[0]
    q.inputs[2] = gs.Constant(f"{sm.name}/zp3", np.array(3, np.int8))


def _mask(g, sm):
    q = sm.inputs[0].inputs[0]
    masked = gs.Variable(f"{sm.name}/masked", dtype=np.float32)
    g.nodes.append(gs.Node("Add", inputs=[q.inputs[0], gs.Constant(
        f"{sm.name}/mask", np.zeros((1, 1, 1, 65), np.float32))], outputs=[masked]))
    q.inputs[0] = masked


def _bits(g, sm):
    sm.outputs[0].outputs[0].attrs["bits"] = 3


def _codes_read(g, sm):
    g.outputs.append(sm.outputs[0])


def _vector_step(g, sm):
    mul = sm.outputs[0].outputs[0].outputs[0].outputs[0].outputs[0].outputs[0]
    mul.inputs[1] = gs.Constant(f"{sm.name}/steps", np.full(32, 1e-6, np.float32))


def _float_output(g, sm):
    node = sm  # LogIntSoftmax -> LogIntMatMul -> Cast -> Mul -> Transpose -> Reshape -> Q -> DQ
    for _ in range(6):
        node = node.outputs[0].outputs[0]
    reshape, dq = node.inputs[0], node.outputs[0].outputs[0]
    for c in list(dq.outputs[0].outputs):
        c.inputs[c.inputs.index(dq.outputs[0])] = reshape


@pytest.mark.parametrize(("edit", "why"), [
    (_wide, "scores are not int8 codes with zero point 0 (int32 wide scores)"),
    (_mask, "scores are not a plain MatMul (mask, attention bias or relative positions)"),
    (_bits, "LogIntMatMul's bits or octave_steps differ from the softmax's"),
    (_codes_read, "log codes are not read by one LogIntMatMul only"),
    (_vector_step, "LogIntMatMul output is not Cast(FLOAT) then Mul(scalar step)"),
    (_float_output, "merged output is not quantized per-tensor to uint8 (read in float)"),
])
def test_refusals(plain, edit, why):
    _, result, _ = run_pass(FuseLogIntAttention(), _edit(_prepared(plain), edit), numeric="none")
    assert result.applied == 0 and reasons(result) == [why, why]
