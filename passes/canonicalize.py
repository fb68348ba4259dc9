"""The canonicalisation pipeline every onnxvq command starts with. Each pass is numerically
neutral."""

from __future__ import annotations

from onnxvq.core.pipeline import Pipeline
from onnxvq.passes.fold_constants import FoldConstants
from onnxvq.passes.fold_static_shapes import FoldStaticShapes
from onnxvq.passes.fuse_layernorm import FuseLayerNorm
from onnxvq.passes.normalize_attention_scale import NormalizeAttentionScale
from onnxvq.passes.remove_softmax_nan_guard import RemoveSoftmaxNanGuard


def canonicalize_pipeline() -> Pipeline:
    return Pipeline((FoldConstants(), FoldStaticShapes(), FuseLayerNorm(), RemoveSoftmaxNanGuard(),
                     NormalizeAttentionScale()))
