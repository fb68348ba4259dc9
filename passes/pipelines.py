"""The pass pipelines onnxvq runs, declared once, in order.

A run is two stages, each one `Pipeline` over one in-memory graph (exported and checked once at
the stage's end):

    canonical     CANONICAL, or TENSORRT_CANONICAL for target trt; numerically neutral
    quantization  W8A8; PTS_W8A8 (--pts), LIS_W8A8 (--lis) or FULLY_QUANTIZED (both) put FQ-ViT's
                  integer LayerNorm / Softmax passes in front of it

`onnxvq.quantizer.run` picks one of each (`canonical_pipeline`, `quantization_pipeline`) and runs
it; nothing else decides which passes run or in what order.
"""

from __future__ import annotations

import onnx

from onnxvq.core.config import QuantConfig
from onnxvq.core.pipeline import Pipeline, PipelineReport
from onnxvq.passes.center_attention_probs import CenterAttentionProbs
from onnxvq.passes.compose_key_transpose import ComposeKeyTranspose
from onnxvq.passes.einsum_to_matmul import EinsumToMatMul
from onnxvq.passes.fold_batchnorm import FoldBatchNorm
from onnxvq.passes.fold_constants import FoldConstants
from onnxvq.passes.fold_linear_batchnorm import FoldLinearBatchNorm
from onnxvq.passes.fold_requantize import FoldRequantize
from onnxvq.passes.fold_reshaped_transpose import FoldReshapedTranspose
from onnxvq.passes.fold_scale_into_dequantize import FoldScaleIntoDequantize
from onnxvq.passes.fold_scale_into_query import FoldScaleIntoQuery
from onnxvq.passes.fold_static_shapes import FoldStaticShapes
from onnxvq.passes.fuse_add_int_layer_norm import FuseAddIntLayerNorm
from onnxvq.passes.fuse_add_layernorm_quantize import FuseAddLayerNormQuantize
from onnxvq.passes.fuse_add_mul_quantize import FuseAddMulQuantize
from onnxvq.passes.fuse_gelu_quantize import FuseGeluQuantize
from onnxvq.passes.fuse_layernorm import FuseLayerNorm
from onnxvq.passes.fuse_linear_quantize import FuseLinearQuantize
from onnxvq.passes.fuse_log_int_attention import FuseLogIntAttention
from onnxvq.passes.fuse_qlinear_attention import FuseQLinearAttention
from onnxvq.passes.hoist_quantize_over_split import HoistQuantizeOverSplit
from onnxvq.passes.insert_qdq import InsertActivationQDQ
from onnxvq.passes.log_softmax_qdq import LogSoftmaxQDQ
from onnxvq.passes.multihead_attention_layout import MultiheadAttentionLayout
from onnxvq.passes.normalize_attention_scale import NormalizeAttentionScale
from onnxvq.passes.ort_fast_gelu import OrtFastGelu
from onnxvq.passes.ort_matmul_bias import OrtMatMulBias
from onnxvq.passes.ort_matmul_nbits import OrtMatMulNBits
from onnxvq.passes.ort_mixed_qmatmul import OrtMixedQMatMul
from onnxvq.passes.ort_quantized_linear import OrtQuantizedLinear
from onnxvq.passes.ort_unsigned_weights import OrtUnsignedWeights
from onnxvq.passes.pack_int4_weights import PackInt4Weights
from onnxvq.passes.patch_conv_to_matmul import PatchConvToMatMul
from onnxvq.passes.quantize_weights import QuantizeWeights
from onnxvq.passes.remove_identity_cast import RemoveIdentityCast
from onnxvq.passes.remove_softmax_nan_guard import RemoveSoftmaxNanGuard
from onnxvq.passes.remove_zero_attention_mask import RemoveZeroAttentionMask
from onnxvq.passes.reparameterize_activation import ReparameterizeActivation
from onnxvq.passes.reparameterize_layernorm import ReparameterizeLayerNorm
from onnxvq.passes.replace_layernorm import ReplaceLayerNorm
from onnxvq.passes.replace_softmax import ReplaceSoftmax
from onnxvq.passes.smooth_linear_inputs import SmoothLinearInputs
from onnxvq.passes.twin_qdq import TwinQDQ
from onnxvq.passes.unbind_slices_to_split import UnbindSlicesToSplit

# Every command starts here: constants and shape noise folded, BatchNorm folded into Convs and
# Linears (LeViT), dynamo's spellings as TorchScript's (the 3-D kᵀ Reshape, Transpose, Reshape one
# 4-D Transpose, composed with a head-split Transpose before it; unbind's Slice + Squeeze per index
# one Split), LayerNorm fused, the SDPA NaN guard, Hugging Face's all-zero additive mask and
# float-to-float Casts dropped, batched-matmul Einsums as MatMul (torchvision's MaxViT), torch's
# nn.MultiheadAttention in timm's batch-first packed layout (torchvision ViT), the
# attention scale one Mul on Q·Kᵀ (the form the recogniser and FQ-ViT expect).
CANONICAL = Pipeline((FoldConstants(), FoldBatchNorm(), FoldLinearBatchNorm(), FoldStaticShapes(),
                      FoldReshapedTranspose(), ComposeKeyTranspose(), UnbindSlicesToSplit(),
                      FuseLayerNorm(), RemoveSoftmaxNanGuard(), RemoveZeroAttentionMask(),
                      RemoveIdentityCast(), EinsumToMatMul(), MultiheadAttentionLayout(),
                      NormalizeAttentionScale()),
                     infer_shapes=True)

# TensorRT's fused attention wants the scale on Q before Q·Kᵀ (numerically neutral); quantization
# then calibrates the scaled Q, so its Q/DQ sits directly on the MatMul input.
TENSORRT_CANONICAL = CANONICAL + Pipeline((FoldScaleIntoQuery(),))

# int8 weights per output channel, Q/DQ at the planned activation sites, then the Q(DQ(q))
# identities those leave behind dropped.
W8A8 = Pipeline((QuantizeWeights(), InsertActivationQDQ(), FoldRequantize()))

# FQ-ViT: IntLayerNorm (PTS) and LogIntSoftmax/LogIntMatMul (LIS) first, so the W8A8 passes see
# the integer ops' own quantizers (their output DQ feeds a linear whose input Q folds away).
PTS_W8A8 = Pipeline((ReplaceLayerNorm(),)) + W8A8
LIS_W8A8 = Pipeline((ReplaceSoftmax(),)) + W8A8
FULLY_QUANTIZED = Pipeline((ReplaceLayerNorm(), ReplaceSoftmax())) + W8A8


# RepQ-ViT (--reparam / --reparam-mlp), between recognition and the main calibration: fold the
# per-channel quantizers in `ctx.channel_qparams` into LayerNorms/Linears (numerically neutral).
REPARAMETERIZE = Pipeline((ReparameterizeLayerNorm(), ReparameterizeActivation()))

# SmoothQuant (--smooth), before REPARAMETERIZE: the factors in `ctx.smooth_factors` folded into
# the producing LayerNorms / Linears and the consuming Linears (numerically neutral).
SMOOTH = Pipeline((SmoothLinearInputs(),))


# Target ort only: the QDQ graph lowered into the fused kernels ONNX Runtime's CPU provider runs
# fastest (GELU + its QuantizeLinear as one com.onnxvq kernel, else FastGelu; bias and scale
# folded into its int8 GEMMs, the patch Conv as an int8 MatMul, one quantizer per QKV tensor,
# each W8/A8 attention one fused QLinearAttention from the packed QKV codes to the output
# projection's codes, each --lis attention one LogIntAttention (exact); weight-only 4-bit Linears
# as MatMulNBits; last, residual Add + LayerNorm + QuantizeLinear, or with --pts Add + Mul +
# QuantizeLinear before an IntLayerNorm, as one com.onnxvq kernel, once the passes that read the
# QuantizeLinears are done; then that one and its IntLayerNorm as AddIntLayerNorm). Every pass
# but fuse-gelu-quantize, fuse-add-layernorm-quantize, ort-fast-gelu and fuse-qlinear-attention
# (float GELU / LayerNorm / softmax rounding) is bit-exact; each is tested against the graph
# before it.
# Last, every int8 Linear (MatMulIntegerToFloat) as onnxvq's QuantizedLinear where this machine
# has AMX-INT8 (QuantConfig.quantized_linear: auto/on/off), then the QKV projection's
# QuantizeLinear and fc1's GeluQuantizeLinear as its epilogue; all bit-exact.
# `QuantConfig(ort_fusions=False)` keeps the plain QDQ graph; --lis-qdq (a model without custom
# ops) gets ORT_CONTRIB_LOWERING, the com.microsoft passes alone.
ORT_CONTRIB_LOWERING = Pipeline((OrtFastGelu(), FoldScaleIntoDequantize(), PatchConvToMatMul(),
                                 HoistQuantizeOverSplit(), OrtMatMulBias(), OrtMixedQMatMul(),
                                 OrtMatMulNBits()))
ORT_LOWERING = Pipeline((FuseGeluQuantize(), OrtFastGelu(), FoldScaleIntoDequantize(),
                         PatchConvToMatMul(), HoistQuantizeOverSplit(), FuseQLinearAttention(),
                         FuseLogIntAttention(), OrtMatMulBias(), OrtMixedQMatMul(),
                         OrtMatMulNBits(), FuseAddLayerNormQuantize(), FuseAddMulQuantize(),
                         FuseAddIntLayerNorm(), OrtQuantizedLinear(), FuseLinearQuantize()))
LOWERED = {p: p + ORT_LOWERING for p in (W8A8, PTS_W8A8, LIS_W8A8, FULLY_QUANTIZED)}
# --lis-qdq: LIS's log codes (base --lis-base) on the attention probabilities in standard ops,
# for runtimes without the custom ops (float emulation; passes/log_softmax_qdq.py).
LOG_SOFTMAX_QDQ = Pipeline((LogSoftmaxQDQ(),))

# Target ort, lowered or not, last before the INT4 packing: the int8 weights ORT's own int8
# kernels read as uint8 W+128 with zero point 128 where MLAS's U8S8 kernels saturate (no VNNI,
# no AMX; QuantConfig.ort_weights); numerically neutral.
UNSIGNED_WEIGHTS = Pipeline((OrtUnsignedWeights(),))

# Weights of 4 bits or fewer stored as INT4 (opset 21) behind a Cast to int8 that ORT folds at
# load, last, after every pass that reads the int8 codes; W8 models keep their opset.
PACK_INT4 = Pipeline((PackInt4Weights(),))


def canonical_pipeline(cfg: QuantConfig | None = None) -> Pipeline:
    return TENSORRT_CANONICAL if cfg is not None and cfg.target == "trt" else CANONICAL


def quantization_pipeline(cfg: QuantConfig) -> Pipeline:
    """--method twin adds PTQ4ViT's twin-uniform sites as two Q/DQ branches after the W8A8 Q/DQ
    exist (the branches reuse the other operand's DQ), before the requantize folding; it is not
    lowered for ORT (its two-branch Q/DQ is outside what the lowering passes match). Target trt
    with `center` adds center-attention-probs after the Q/DQ exist."""
    base = {(False, False): W8A8, (True, False): PTS_W8A8, (False, True): LIS_W8A8,
            (True, True): FULLY_QUANTIZED}[(cfg.pts, cfg.lis)]
    if cfg.method == "twin":
        *head, fold = base.passes
        base = Pipeline((*head, TwinQDQ(), fold))
    elif cfg.lis_qdq:  # the probs' uniform Q/DQ becomes log codes before the ORT lowering
        base = base + LOG_SOFTMAX_QDQ
        if cfg.target == "ort" and cfg.ort_fusions:
            base = base + ORT_CONTRIB_LOWERING
    elif cfg.target == "trt" and cfg.center:  # symmetric int8: the probabilities centred
        *head, fold = base.passes
        base = Pipeline((*head, CenterAttentionProbs(), fold))
    elif cfg.target == "ort" and cfg.ort_fusions:
        base = LOWERED[base]
    if cfg.target == "ort":
        base = base + UNSIGNED_WEIGHTS
    return base + PACK_INT4 if _four_bit_weights(cfg) else base


def _four_bit_weights(cfg: QuantConfig) -> bool:
    return min(cfg.w_bits, cfg.edge_bits or 8) <= 4


def canonicalize(model: onnx.ModelProto, *, numeric: str = "end",
                 ) -> tuple[onnx.ModelProto, PipelineReport]:
    """Run the canonicalisation pipeline (numerically neutral, checked in ORT to 1e-4 unless
    `numeric="none"`)."""
    return CANONICAL.run(model, numeric=numeric)
