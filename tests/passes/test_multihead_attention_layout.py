"""multihead-attention-layout: torch's nn.MultiheadAttention (sequence-first tokens, packed in_proj,
[N, B·H, D] heads) rewritten as timm's batch-first [B, N, 3, H, D] / [B, H, N, D] spelling, so the
fused attentions take it: exact op counts after the canonical stage, ORT within 1e-5 of the export,
one QLinearAttention per attention within 0.3 dB of the unfused lowering, every refusal. A tiny
module exported here by both exporters (batch-first and sequence-first), the trained vit_cifar10
(nn.TransformerEncoderLayer) and, slow, torchvision's ViT."""

from __future__ import annotations

import importlib.util
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import helper
from passtools import make_model, ops, reasons, run_pass

from onnxvq.core.config import QuantConfig
from onnxvq.passes.multihead_attention_layout import MultiheadAttentionLayout
from onnxvq.passes.pipelines import ORT_LOWERING, canonicalize
from onnxvq.quantizer.run import quantize

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="needs torch ([export] extra)")
NOISE = dict(calib_size=6, batch_size=2, quantized_linear="off")
PASS = "multihead-attention-layout"


def _export(tmp_path, batch_first: bool, exporter: str) -> onnx.ModelProto:
    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = torch.nn.MultiheadAttention(32, 4, batch_first=batch_first)

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0] + x

    torch.manual_seed(0)
    module = Block().eval()
    with torch.no_grad():  # torch starts both biases at 0: random ones, so the rewrite keeps them
        for p in module.parameters():
            p.normal_(0, 0.2)
    # sequence-first: a static batch (onnxvq's samples are [B, ...] with B the only free dim)
    x = torch.randn(2, 10, 32) if batch_first else torch.randn(10, 2, 32)
    path = tmp_path / f"mha_{batch_first}_{exporter}.onnx"
    if exporter == "dynamo":
        dims = ({0: torch.export.Dim("batch", min=1, max=64)},) if batch_first else None
        torch.onnx.export(module, (x,), str(path), dynamo=True, input_names=["x"],
                          dynamic_shapes=dims)
    else:
        torch.onnx.export(module, (x,), str(path), dynamo=False, input_names=["x"],
                          opset_version=int(exporter.removeprefix("torchscript")),
                          dynamic_axes={"x": {0: "batch"}} if batch_first else None)
    return onnx.load(str(path))


# the canonical graph's ops: in_proj MatMul, q·kᵀ, probs·v, out_proj MatMul; Transposes
# [2,0,3,1,4], kᵀ's [0,1,3,2] and the merge's [0,2,1,3] (the sequence-first module: one more
# each side, [N, B, C] in and out)
BATCH_FIRST = {"MatMul": 4, "Add": 3, "Reshape": 2, "Transpose": 3, "Gather": 3, "Mul": 1,
               "Softmax": 1}
SEQ_FIRST = {**BATCH_FIRST, "Transpose": 5}


@pytest.mark.corpus
@needs_torch
@pytest.mark.parametrize("exporter", ["torchscript17", "torchscript18",
                                      pytest.param("dynamo", marks=pytest.mark.slow)])
@pytest.mark.parametrize("batch_first", [True, False])
def test_torch_mha_becomes_packed_layout_and_fuses(tmp_path, batch_first, exporter,
                                                    unfused_fused_sqnr):
    model = _export(tmp_path, batch_first, exporter)
    canonical, report = canonicalize(model)
    assert report.result(PASS).applied == 1
    assert report.numeric.max_abs_diff < 1e-5
    assert ops(canonical) == (BATCH_FIRST if batch_first else SEQ_FIRST)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    noise = NOISE if batch_first else dict(NOISE, calib_size=20, batch_size=10)  # axis 0: N
    plain = quantize(str(path), None, QuantConfig(ort_fusions=False, **noise)).model
    fused, lowered = ORT_LOWERING.run(plain, numeric="none")
    assert lowered.result("fuse-qlinear-attention").applied == 1
    assert ops(fused)["QLinearAttention"] == 1
    unfused_db, fused_db, apart_db = unfused_fused_sqnr(path, plain, fused,
                                                        "fuse-qlinear-attention")
    assert fused_db > unfused_db - 0.3 and apart_db > 25


def _reader_on_piece(g):  # a fourth reader of the q piece (a Gather output)
    gather = next(n for n in g.node if n.op_type == "Gather" and "Squeeze" in n.input[0])
    g.node.append(helper.make_node("Identity", [gather.output[0]], ["extra"]))
    g.output.append(helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT,
                                                  [10, "batch", 32]))


def _gemm_trans_b_0(g):  # the out-projection as Gemm(transB=0) over W_oᵀ
    gemm = next(n for n in g.node if n.op_type == "Gemm")
    w = next(i for i in g.initializer if i.name == gemm.input[1])
    w.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(w).T.copy(), w.name))
    for a in gemm.attribute:
        if a.name == "transB":
            a.i = 0


@needs_torch
@pytest.mark.corpus
@pytest.mark.parametrize("edit, why", [
    (_reader_on_piece, "a piece is not Reshape [N, B·H, D] -> Transpose [1,0,2]"),
    (_gemm_trans_b_0, "the head merge is not Transpose [2,0,1,3]"),
])
def test_refusals(tmp_path, edit, why):
    model = _export(tmp_path, True, "torchscript17")
    edit(model.graph)
    canonical, report = canonicalize(model)
    res = report.result(PASS)
    assert res.applied == 0 and report.numeric.max_abs_diff < 1e-5
    (reason,) = reasons(res)
    assert why in reason
    assert ops(canonical)["Gemm"] == 1 and ops(canonical)["Squeeze"] == 1


def test_cross_attention_is_refused_by_name():
    """SigLIP's pooling head: k and v from one [C, 2C] projection, q from its own."""
    c, n = 8, 5
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("Add", ["b", "y"], ["kv"]),
             helper.make_node("Reshape", ["kv", "shape"], ["kv4"]),
             helper.make_node("Unsqueeze", ["kv4", "zero"], ["kv5"]),
             helper.make_node("Transpose", ["kv5"], ["kvt"], perm=[3, 1, 2, 0, 4])]
    model = make_model(nodes, [("x", [n, 1, c])], [("kvt", [2, n, 1, 1, c])],
                       {"w": rng.normal(size=(c, 2 * c)).astype(np.float32),
                        "b": rng.normal(size=2 * c).astype(np.float32),
                        "shape": np.array([n, 1, 2, c]), "zero": np.array([0])})
    _, res, _ = run_pass(MultiheadAttentionLayout(), model)
    assert res.applied == 0 and reasons(res) == [
        "cross-attention (k, v packed [C, 2C], q projected alone): no packed q, k, v"]


@pytest.mark.realdata
def test_vit_cifar10_attentions_fuse(shared_data, unfused_fused_sqnr):
    """The trained nn.TransformerEncoderLayer ViT: 6 of 6 fused (none before), W8/A8 and LIS."""
    path = shared_data / "models" / "vit_cifar10.onnx"
    canonical, report = canonicalize(onnx.load(str(path)))
    assert report.result(PASS).applied == 6 and report.numeric.max_abs_diff < 1e-5
    assert ops(canonical)["Gemm"] == 1  # the classifier; the 6 out-projections are MatMuls
    plain = quantize(str(path), None, QuantConfig(ort_fusions=False, **NOISE)).model
    fused, lowered = ORT_LOWERING.run(plain, numeric="none")
    assert lowered.result("fuse-qlinear-attention").applied == 6
    assert not lowered.result("fuse-qlinear-attention").refused
    unfused_db, fused_db, apart_db = unfused_fused_sqnr(path, plain, fused,
                                                        "fuse-qlinear-attention")
    assert fused_db > unfused_db - 0.3 and apart_db > 25
    lis = quantize(str(path), None, QuantConfig(pts=True, lis=True, **NOISE)).model
    assert Counter(n.op_type for n in lis.graph.node)["LogIntAttention"] == 6
