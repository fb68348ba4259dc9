"""The ORT lowering (target ort, default): the quantized tiny ViT runs as ORT's fused integer
kernels and stays within W8/A8 noise of the plain QDQ model it was lowered from."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxvq.core.config import QuantConfig
from onnxvq.core.metrics import sqnr
from onnxvq.core.pipeline import Pipeline
from onnxvq.core.runtime import make_session, random_inputs, session_options
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.passes.pipelines import ORT_LOWERING
from onnxvq.quantizer.run import quantize

NOISE = dict(calib_size=8, batch_size=4)
LOWERING = ("fuse-gelu-quantize", "ort-fast-gelu", "fold-scale-into-dequantize",
            "patch-conv-to-matmul", "hoist-quantize-over-split", "fuse-qlinear-attention",
            "fuse-log-int-attention", "ort-matmul-bias", "ort-mixed-qmatmul", "ort-matmul-nbits",
            "fuse-add-layernorm-quantize", "fuse-add-mul-quantize", "fuse-add-int-layer-norm",
            "quantized-linear", "fuse-linear-quantize")
# float GELU / softmax / LayerNorm rounding
INEXACT = ("fuse-gelu-quantize", "ort-fast-gelu", "fuse-qlinear-attention",
           "fuse-add-layernorm-quantize")


def _ort_ops(model: onnx.ModelProto, tmp_path) -> Counter:
    so = session_options(threads=1)
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_vit(TinyViTConfig(depth=2, dim=96, heads=3))


@pytest.mark.parametrize("fq", [False, True], ids=["w8a8", "pts-lis"])
def test_lowered_model_matches_plain_qdq(tiny, fq, tmp_path):
    extra = dict(pts=True, lis=True) if fq else {}
    plain = quantize(tiny, None, QuantConfig(ort_fusions=False, **extra, **NOISE))
    low = quantize(tiny, None, QuantConfig(**extra, **NOISE))
    applied = {r.pass_id: r.applied for r in low.passes}
    assert applied["fuse-gelu-quantize"] == 2 and applied["ort-fast-gelu"] == 0
    assert applied["patch-conv-to-matmul"] == 1
    assert applied["hoist-quantize-over-split"] == 2
    assert applied["fold-scale-into-dequantize"] == 2
    # qkv, proj, fc2 per block, the patch embedding; fc1's bias went into GeluQuantizeLinear
    assert applied["ort-matmul-bias"] == 2 * 3 + 1
    assert applied["ort-mixed-qmatmul"] == 0  # the --lis scores GEMM is inside LogIntAttention
    assert applied["fuse-qlinear-attention"] == (0 if fq else 2)
    assert applied["fuse-log-int-attention"] == (2 if fq else 0)
    assert not any(r.pass_id in LOWERING for r in plain.passes)
    ops = _ort_ops(low.model, tmp_path)
    assert ops["Conv"] == 0 and ops["BiasGelu"] == 0 and ops["Erf"] == 0 and ops["MatMul"] == 0
    # (where this CPU has AMX fc1 writes the GELU codes itself: QuantizedLinearGeluQuantize)
    assert ops["FastGelu"] == 0
    assert ops["GeluQuantizeLinear"] + ops["QuantizedLinearGeluQuantize"] == 2
    q_plain = Counter(n.op_type for n in plain.model.graph.node)["QuantizeLinear"]
    low_ops = Counter(n.op_type for n in low.model.graph.node)
    # ... and the QKV projection its hoisted quantizer's codes (QuantizedLinearQuantize)
    q_low = low_ops["QuantizeLinear"] + low_ops["QuantizedLinearQuantize"]
    # both LayerNorms of each block with their residual Add (not the final norm, read by the
    # head in float); --pts has IntLayerNorms instead
    assert applied["fuse-add-layernorm-quantize"] == (0 if fq else 2 * 2)
    assert ops["AddLayerNormQuantize"] == (0 if fq else 2 * 2)
    # --pts: every IntLayerNorm's input quantizer with its residual Add (the final norm's too)
    assert applied["fuse-add-mul-quantize"] == (2 * 2 + 1 if fq else 0)
    # ... and each of those with its IntLayerNorm: no IntLayerNorm is left on its own
    assert applied["fuse-add-int-layer-norm"] == (2 * 2 + 1 if fq else 0)
    assert ops["AddIntLayerNorm"] == (2 * 2 + 1 if fq else 0) and ops["AddMulQuantizeLinear"] == 0
    assert ops["IntLayerNorm"] == 0
    # 3 quantizers after each QKV split become 1; the probabilities' (W8/A8) or the scores' (LIS)
    # and the merged output's go into the fused attention op; each GELU's and LayerNorm's into a
    # fused kernel
    assert q_low == (q_plain - 2 * 2 - 2 * 2 - 2 - applied["fuse-add-layernorm-quantize"]
                     - applied["fuse-add-mul-quantize"])
    f = make_session(tiny)
    feeds = random_inputs(f, batch=16, seed=7)
    ref = f.run(None, feeds)[0]
    x = make_session(plain.model).run(None, feeds)[0]
    y = make_session(low.model).run(None, feeds)[0]
    # the fused kernel's erf moves a GELU code only within ~1e-6 of a rounding midpoint: the
    # error against FP32 stays within a small fraction of a dB of the plain QDQ model's
    assert abs(sqnr(ref, y) - sqnr(ref, x)) < 0.2
    assert (ref.argmax(1) == y.argmax(1)).mean() >= (ref.argmax(1) == x.argmax(1)).mean() - 0.07
    # the other passes are exact: the same outputs bit for bit
    exact, _ = Pipeline(tuple(p for p in ORT_LOWERING.passes if p.id not in INEXACT)).run(
        plain.model, numeric="none")
    assert [p.id for p in ORT_LOWERING.passes] == list(LOWERING)
    np.testing.assert_array_equal(make_session(exact).run(None, feeds)[0], x)


def test_trt_target_is_not_lowered(tiny):
    r = quantize(tiny, None, QuantConfig(target="trt", **NOISE))
    assert not any(p.pass_id in LOWERING for p in r.passes)
    assert not any(n.domain == "com.microsoft" for n in r.model.graph.node)


@pytest.mark.slow
@pytest.mark.corpus
def test_deit_small_pts_norms_are_fused(corpus_model, tmp_path):
    """timm's ViT-S/16 (DeiT-S) with --pts --lis: every norm after a residual Add (24: both norms
    of blocks 1-11, norm2 of block 0 and the final norm) is one AddIntLayerNorm; block 0's norm1
    reads the patch embedding + position embedding Add, whose Concat input has no inferred shape
    (fuse-add-mul-quantize refuses it), so it stays one IntLayerNorm; no AddMulQuantizeLinear
    is left. Counted in the model ORT actually runs."""
    path = corpus_model("vit_small_patch16_224", "torchscript17")
    r = quantize(path, None, QuantConfig(pts=True, lis=True, **NOISE))
    applied = {p.pass_id: p.applied for p in r.passes}
    assert applied["fuse-add-mul-quantize"] == 24 and applied["fuse-add-int-layer-norm"] == 24
    ops = _ort_ops(r.model, tmp_path)
    assert ops["AddIntLayerNorm"] == 24 and ops["IntLayerNorm"] == 1
    assert ops["AddMulQuantizeLinear"] == 0 and ops["LayerNormalization"] == 0
