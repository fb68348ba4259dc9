"""fuse-qlinear-attention: each quantized attention of the tiny ViT (Gather and Split head splits),
with or without a constant attention bias / window mask, becomes one QLinearAttention within W8/A8
noise of the unfused graph; every refusal has its case."""

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
from onnxvq.passes.fold_scale_into_dequantize import FoldScaleIntoDequantize
from onnxvq.passes.fuse_qlinear_attention import FuseQLinearAttention
from onnxvq.passes.hoist_quantize_over_split import HoistQuantizeOverSplit
from onnxvq.quantizer.run import quantize

NOISE = dict(calib_size=8, batch_size=4)
BEFORE = (FoldScaleIntoDequantize(), HoistQuantizeOverSplit())  # what ORT_LOWERING runs first


def _prepared(hoist: bool = True, **vit) -> onnx.ModelProto:
    """The tiny ViT's W8/A8 QDQ graph as the pass sees it in ORT_LOWERING."""
    fp32 = build_tiny_vit(TinyViTConfig(depth=2, dim=96, heads=3, **vit))
    plain = quantize(fp32, None, QuantConfig(ort_fusions=False, **NOISE)).model
    passes = BEFORE if hoist else BEFORE[:1]
    return Pipeline(passes).run(plain, numeric="none")[0]


def _sqnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10((a**2).sum() / max(((a - b) ** 2).sum(), 1e-30)))


@pytest.fixture(scope="module")
def prepared():
    return _prepared()


@pytest.mark.parametrize("qkv", ["packed", "packed_split", "separate"])
def test_fused_model_within_w8a8_noise(qkv, prepared):
    """Separate q, k, v projections (Hugging Face's) too: their three codes, quantized before
    the head split instead of after it, are packed by one Concat the fused node reads."""
    model = prepared if qkv == "packed" else _prepared(qkv=qkv)
    out, result, _ = run_pass(FuseQLinearAttention(), model, numeric="none")
    assert result.applied == 2 and not result.refused
    ops, before = (Counter(n.op_type for n in m.graph.node) for m in (out, model))
    assert ops["QLinearAttention"] == 2 and ops["Softmax"] == 0 and ops["MatMul"] == \
        before["MatMul"] - 2 * 2
    # per block: the QKV permutation, kᵀ and the head merge (separate: q's, kᵀ's, v's and the
    # merge); the probabilities' and the merge's quantizers (q, k, v keep theirs)
    assert ops["Transpose"] == before["Transpose"] - 2 * (4 if qkv == "separate" else 3)
    assert ops["QuantizeLinear"] == before["QuantizeLinear"] - 2 * 2
    assert ops["Concat"] - before["Concat"] == (2 if qkv == "separate" else 0)
    feeds = random_inputs(make_session(model), batch=16, seed=3)
    want = make_session(model).run(None, feeds)[0]
    got = make_session(out).run(None, feeds)[0]
    inlined = make_session(out, custom_ops=False).run(None, feeds)[0]
    # measured: identical logits on these inputs; the bound leaves room for a probability code
    # moving by one (float softmax rounding), i.e. a few 1e-3 of the logits' scale
    assert _sqnr(want, got) > 40 and _sqnr(want, inlined) > 40
    assert (want.argmax(1) == got.argmax(1)).mean() >= 0.9


def _edit(model: onnx.ModelProto, how) -> onnx.ModelProto:
    g = gs.import_onnx(model)
    for sm in [n for n in g.nodes if n.op == "Softmax"]:
        how(g, sm)
    g.cleanup().toposort()
    return gs.export_onnx(g)


def _add(g: gs.Graph, sm: gs.Node, other, name: str = "biased") -> None:
    out = gs.Variable(f"{sm.name}/{name}", dtype=np.float32)
    g.nodes.append(gs.Node("Add", inputs=[sm.inputs[0], other], outputs=[out]))
    sm.inputs[0] = out


def _relpos(g: gs.Graph, sm: gs.Node) -> None:  # BEiT / Swin: a constant [1, H, N, N]
    rng = np.random.default_rng(len(sm.name))
    _add(g, sm, gs.Constant(f"{sm.name}/rel", rng.normal(0, 1.5, (1, 3, 65, 65)).astype(
        np.float32)))


def _window_mask(g: gs.Graph, sm: gs.Node, windows: int = 2) -> None:
    """Swin's shifted windows: the relative bias, then Reshape [-1, W, H, N, N], Add of a 0/-100
    mask [1, W, 1, N, N], Reshape [-1, H, N, N] (here W = 2 "windows" per image pair)."""
    _relpos(g, sm)
    rng = np.random.default_rng(7)
    mask = np.where(rng.random((1, windows, 1, 65, 65)) < 0.4, -100.0, 0.0).astype(np.float32)
    view, added, back = (gs.Variable(f"{sm.name}/{n}", dtype=np.float32)
                         for n in ("view", "masked", "back"))
    g.nodes += [gs.Node("Reshape", inputs=[sm.inputs[0], gs.Constant(
                    f"{sm.name}/v5", np.array([-1, windows, 3, 65, 65]))], outputs=[view]),
                gs.Node("Add", inputs=[view, gs.Constant(f"{sm.name}/mask", mask)],
                        outputs=[added]),
                gs.Node("Reshape", inputs=[added, gs.Constant(
                    f"{sm.name}/v4", np.array([-1, 3, 65, 65]))], outputs=[back])]
    sm.inputs[0] = back


def _computed_bias(g: gs.Graph, sm: gs.Node) -> None:  # a bias read off the scores themselves
    _add(g, sm, sm.inputs[0])


def _narrow_bias(g: gs.Graph, sm: gs.Node) -> None:  # a leading 2: a per-image bias
    _add(g, sm, gs.Constant(f"{sm.name}/odd", np.ones((2, 3, 65, 65), np.float32)))


def _float_output(g: gs.Graph, sm: gs.Node) -> None:
    node = sm  # Softmax -> Q -> DQ -> MatMul -> Transpose -> Reshape -> Q -> DQ
    for _ in range(6):
        node = node.outputs[0].outputs[0]
    reshape, dq = node.inputs[0], node.outputs[0].outputs[0]
    for c in list(dq.outputs[0].outputs):  # the output projection reads the float merge
        c.inputs[c.inputs.index(dq.outputs[0])] = reshape


def _scaled_query(g: gs.Graph, sm: gs.Node) -> None:  # a per-head norm / cosine-style rescale
    mm = sm.inputs[0].inputs[0]
    scaled = gs.Variable(f"{sm.name}/q_scaled", dtype=np.float32)
    g.nodes.append(gs.Node("Mul", inputs=[mm.inputs[0], gs.Constant(
        f"{sm.name}/tau", np.full((1, 3, 1, 1), 0.5, np.float32))], outputs=[scaled]))
    mm.inputs[0] = scaled


def _probs_read(g: gs.Graph, sm: gs.Node) -> None:
    g.outputs.append(sm.outputs[0])


def _axis(g: gs.Graph, sm: gs.Node) -> None:
    sm.attrs["axis"] = 2


@pytest.mark.parametrize(("edit", "why"), [
    (_computed_bias, "attention bias is not a constant (computed from the input)"),
    (_narrow_bias, "attention bias [2, 3, 65, 65] is not [W, 1|3, 65, 65]"),
    (_float_output, "merged output is not quantized per-tensor to uint8 (read in float)"),
    (_scaled_query, "q is not a dequantized piece of hoisted packed QKV codes (q = Mul)"),
    (_probs_read, "attention probabilities are read in float"),
    (_axis, "softmax is not over the last axis"),
])
def test_refusals(prepared, edit, why):
    _, result, _ = run_pass(FuseQLinearAttention(), _edit(prepared, edit), numeric="none")
    assert result.applied == 0 and reasons(result) == [why, why]


@pytest.mark.parametrize("edit", [_relpos, _window_mask], ids=["relpos", "window_mask"])
def test_constant_bias_fuses_within_w8a8_noise(prepared, edit):
    """A relative-position bias and Swin's window mask fuse into the op's `bias` attribute (both
    summed into [W, H, N, N]); the fused model stays within W8/A8 noise of the unfused graph,
    the native kernel and the local function alike."""
    model = _edit(prepared, edit)
    out, result, _ = run_pass(FuseQLinearAttention(), model, numeric="none")
    assert result.applied == 2 and not result.refused
    nodes = [n for n in out.graph.node if n.op_type == "QLinearAttention"]
    shapes = [list(onnx.numpy_helper.to_array(a.t).shape) for n in nodes for a in n.attribute
              if a.name == "bias"]
    windows = 2 if edit is _window_mask else 1
    assert shapes == [[windows, 3, 65, 65]] * 2
    ops = Counter(n.op_type for n in out.graph.node)
    assert ops["Add"] == Counter(n.op_type for n in model.graph.node)["Add"] - 2 * windows
    feeds = random_inputs(make_session(model), batch=16, seed=3)
    want = make_session(model).run(None, feeds)[0]
    got = make_session(out).run(None, feeds)[0]
    inlined = make_session(out, custom_ops=False).run(None, feeds)[0]
    plain = make_session(prepared).run(None, feeds)[0]
    assert _sqnr(want, plain) < 30  # the bias matters
    assert _sqnr(want, got) > 40 and _sqnr(want, inlined) > 40


def _merge_minus_one(g: gs.Graph, sm: gs.Node) -> None:  # dynamo, static batch: [B, N, -1]
    node = sm  # Softmax -> Q -> DQ -> MatMul -> Transpose -> Reshape
    for _ in range(5):
        node = node.outputs[0].outputs[0]
    node.inputs[1] = gs.Constant(f"{sm.name}/merge", np.array([0, 65, -1], np.int64))


def test_a_merge_to_minus_one_fuses(prepared):
    """The merge's target [B, N, -1] (dynamo's static-batch export writes it so): its inferred
    shape [B, N, H·D] proves the merge; it was refused as not [B, N, H·D]."""
    out, result, _ = run_pass(FuseQLinearAttention(), _edit(prepared, _merge_minus_one),
                              numeric="none")
    assert result.applied == 2 and not result.refused


def _q_codes_read(g: gs.Graph, sm: gs.Node) -> None:  # q's codes also a graph output
    g.outputs.append(sm.inputs[0].inputs[0].inputs[0].inputs[0].inputs[0])


def test_refuses_unhoisted_separate_codes_read_and_wide_heads():
    unhoisted = _prepared(hoist=False)
    for model in (unhoisted, _edit(_prepared(qkv="separate"), _q_codes_read)):
        _, result, _ = run_pass(FuseQLinearAttention(), model, numeric="none")
        assert result.applied == 0 and len(result.refused) == 2
        assert all("hoisted packed QKV codes" in r for r in reasons(result))
    # the reason spells each operand's producers, so an exporter's new spelling is named in it
    _, result, _ = run_pass(FuseQLinearAttention(), unhoisted, numeric="none")
    assert reasons(result)[0] == (
        "q and kᵀ are not dequantized pieces of hoisted packed QKV codes "
        "(q = DequantizeLinear(QuantizeLinear(Gather(Transpose[2,0,3,1,4](Reshape(Add))))); "
        "kᵀ = DequantizeLinear(QuantizeLinear(Transpose[0,1,3,2](Gather(Transpose[2,0,3,1,4]("
        "Reshape(Add)))))))")
    wide = build_tiny_vit(TinyViTConfig(depth=1, dim=264, heads=1))
    plain = quantize(wide, None, QuantConfig(ort_fusions=False, **NOISE)).model
    _, result, _ = run_pass(FuseQLinearAttention(), Pipeline(BEFORE).run(
        plain, numeric="none")[0], numeric="none")
    assert result.applied == 0 and reasons(result) == ["head dim 264 above 256"]


@pytest.mark.slow
@pytest.mark.corpus
def test_corpus_deit_tiny_fused_equals_unfused(corpus_model):
    """The TorchScript DeiT-tiny (Split/Squeeze head split, Shape-computed Reshapes): all 12
    attentions fuse, and the lowered model stays within W8/A8 noise of the unfused lowering."""
    from onnxvq.passes.pipelines import ORT_LOWERING

    path = corpus_model("deit_tiny_patch16_224", "torchscript17")
    plain = quantize(str(path), None, QuantConfig(ort_fusions=False, **NOISE)).model
    fused, report = ORT_LOWERING.run(plain, numeric="none")
    assert report.result("fuse-qlinear-attention").applied == 12
    unfused, _ = Pipeline(tuple(p for p in ORT_LOWERING.passes
                                if p.id != "fuse-qlinear-attention")).run(plain, numeric="none")
    fp32 = make_session(str(path))
    feeds = random_inputs(fp32, batch=4, seed=11)
    ref = fp32.run(None, feeds)[0]
    a, b = (make_session(m).run(None, feeds)[0] for m in (unfused, fused))
    # measured (noise calibration): 30.99 dB unfused, 31.15 fused against FP32; 35.5 dB apart
    assert _sqnr(ref, b) > _sqnr(ref, a) - 0.1 and _sqnr(a, b) > 30
