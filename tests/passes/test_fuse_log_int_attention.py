"""fuse-log-int-attention: each --pts --lis attention of the tiny ViT (Gather and Split head
splits; with constant score biases too) becomes one LogIntAttention, bit-identical with the
unfused lowered graph (kernel and local function); every refusal has its case."""

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


def _mask(g, sm):  # a bias computed from the scores themselves: not a constant
    q = sm.inputs[0].inputs[0]
    masked = gs.Variable(f"{sm.name}/masked", dtype=np.float32)
    g.nodes.append(gs.Node("Add", inputs=[q.inputs[0], q.inputs[0]], outputs=[masked]))
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
    (_mask, "attention bias is not a constant (computed from the input)"),
    (_bits, "LogIntMatMul's bits or octave_steps differ from the softmax's"),
    (_codes_read, "log codes are not read by one LogIntMatMul only"),
    (_vector_step, "LogIntMatMul output is not Cast(FLOAT) then Mul(scalar step)"),
    (_float_output, "merged output is not quantized per-tensor to uint8 (read in float)"),
])
def test_refusals(plain, edit, why):
    _, result, _ = run_pass(FuseLogIntAttention(), _edit(_prepared(plain), edit), numeric="none")
    assert result.applied == 0 and reasons(result) == [why, why]


def _biased(plain: onnx.ModelProto, terms: int = 1, overlap: bool = True) -> onnx.ModelProto:
    """The plain QDQ model with constant Adds (relative positions [1, H, N, N]; a second term
    of 0 / -3 entries, disjoint from the first's nonzeros or not) between each attention's
    scores and their int8 quantizer, as a Swin / BEiT export has them."""
    rng = np.random.default_rng(3)

    def add(g, sm):
        q = sm.inputs[0].inputs[0]
        x, n = q.inputs[0], 65
        first = rng.normal(0, 1, (1, 3, n, n)).astype(np.float32)
        second = np.where(rng.random((1, 1, n, n)) < 0.3, -3.0, 0.0).astype(np.float32)
        if not overlap:
            first = np.where(second != 0, 0, first).astype(np.float32)
        for i, b in enumerate((first, second)[:terms]):
            y = gs.Variable(f"{sm.name}/biased{i}", dtype=np.float32)
            g.nodes.append(gs.Node("Add", inputs=[x, gs.Constant(f"{sm.name}/b{i}", b)],
                                   outputs=[y]))
            x = y
        q.inputs[0] = x

    return _edit(plain, add)


@pytest.mark.parametrize(("terms", "overlap"), [(1, True), (2, False)],
                         ids=["relpos", "disjoint-terms"])
def test_biased_lowering_bit_identical(plain, terms, overlap):
    """With constant biases each attention still fuses (its summed `bias` attribute), and the
    fused graph is bit-identical with the unfused one, whose scores ort-mixed-qmatmul now keeps
    integer under the Add (MatMulIntegerToFloat, then the float Add, then the int8 quantizer)."""
    model = _biased(plain, terms, overlap)
    fused, report = ORT_LOWERING.run(model, numeric="none")
    assert report.result("fuse-log-int-attention").applied == 2
    ops = Counter(n.op_type for n in fused.graph.node)
    assert ops["LogIntAttention"] == 2 and ops["LogIntSoftmax"] == 0
    assert sum(a.name == "bias" for n in fused.graph.node for a in n.attribute) == 2
    unfused, _ = Pipeline(OTHERS).run(model, numeric="none")
    before = Counter(n.op_type for n in Pipeline(OTHERS).run(plain, numeric="none")[0].graph.node)
    after = Counter(n.op_type for n in unfused.graph.node)
    assert after["MatMulIntegerToFloat"] == before["MatMulIntegerToFloat"]  # scores integer
    assert after["MatMul"] == before["MatMul"] and after["Add"] == before["Add"] + 2 * terms
    feeds = random_inputs(make_session(model), batch=4, seed=5)
    want = make_session(unfused).run(None, feeds)[0]
    assert not np.array_equal(want, make_session(Pipeline(OTHERS).run(plain, numeric="none")[0])
                              .run(None, feeds)[0])  # the bias moves the logits
    np.testing.assert_array_equal(make_session(fused).run(None, feeds)[0], want)
    np.testing.assert_array_equal(make_session(fused, custom_ops=False).run(None, feeds)[0], want)


def test_overlapping_biases_refused(plain):
    _, result, _ = run_pass(FuseLogIntAttention(), _prepared(_biased(plain, 2)), numeric="none")
    why = ("two attention biases are nonzero at one entry: the unfused Adds round twice, one "
           "summed bias once")
    assert result.applied == 0 and reasons(result) == [why, why]
