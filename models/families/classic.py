"""The seventh round's timm and Hugging Face families beyond the plain and modern ViTs: nested,
pixel-level, conv-hybrid and MetaFormer designs (timm), detection, segmentation and LeViT-style
encoders (Hugging Face). Supported, partly recognised (`found`) or refused by name
(`unsupported`), as the other source modules' entries. A timm `arch` "module.Class" is built
from the class itself (family_modules._timm_class): its registered builder fixes the depths."""

from __future__ import annotations

from onnxvq.models.families.base import HF_SMALL, Family, vit
from onnxvq.models.family_modules import Counts

_METAFORMER = (("depths", (1, 1, 1, 1)), ("dims", (32, 64, 128, 192)))

CLASSIC: tuple[Family, ...] = (
    # Transformer-in-Transformer: each Block is an inner block over each patch's 16 pixel
    # tokens (projected into the patch token) and an outer one over the patches
    Family("tnt_small", "timm", "tnt_s_patch16_224", 224, Counts(4, 4, 15, 4, 8), (("depth", 2),)),
    # ConvNeXt blocks, then block (window) and grid attention with a relative-position MLP
    # (constant in the export); no depth override (MaxxVit's cfg), 16.8 M parameters
    Family("maxxvit_rmlp_nano", "timm", "maxxvit_rmlp_nano_rw_256", 256,
           Counts(14, 14, 37, 21, 28), tags=("big",), found=Counts(14, 14, 37, 14, 28),
           unsupported="ConvNeXt stages: each block's ConvMlp is 1x1 Convs over [B, C, H, W] maps "
           "(not MatMul/Gemm linears), so those 7 MLPs are not found; the 14 attention blocks are"),
    # 10 detection tokens; the class head (a 3-layer ReLU MLP: one MLP, its two activation
    # units chained) gives the logits, so the box head is not in the export and no head Linear
    Family("hf_yolos", "huggingface", "yolos", 224, Counts(2, 2, 5, 3, 4),
           HF_SMALL + (("num_detection_tokens", 10),), heads=0),
    # Mix Transformer (MiT-B0 at depth 1 a stage): spatial-reduction attention, depthwise-conv
    # MLPs (Mix-FFN), overlapping patch embeddings
    Family("hf_segformer", "huggingface", "segformer", 224, Counts(4, 4, 19, 4, 8),
           (("depths", (1, 1, 1, 1)),)),
    # Linear+BatchNorm1d projections (folded), attention biases, subsampling attentions
    Family("hf_levit", "huggingface", "levit", 224, Counts(5, 5, 0, 5, 8),
           (("depths", (1, 1, 1)),), patch_convs=4),
    Family("hf_ijepa", "huggingface", "ijepa", 224, vit(2), HF_SMALL),  # mean-pooled, no CLS
    Family("hf_vit_msn", "huggingface", "vit_msn", 224, vit(2), HF_SMALL),
    # CLIP-style vision towers (pre-LayerNorm, QuickGELU); OWL-ViT at patch 32
    Family("hf_owlvit_vision", "huggingface", "owlvit_vision", 224, Counts(2, 2, 6, 2, 4),
           HF_SMALL[:4] + (("patch_size", 32),), heads=0),
    Family("hf_owlv2_vision", "huggingface", "owlv2_vision", 224, Counts(2, 2, 6, 2, 4),
           HF_SMALL, heads=0),
    # convolutional projections: q, k, v each a depthwise Conv + BatchNorm of the token map
    # (strided for k and v) before its Linear; a class token in the last stage. Depths 1-2-3:
    # its drop-path rates index a stage's list by the stage, so stage i needs i + 1 layers
    Family("hf_cvt", "huggingface", "cvt", 224, Counts(6, 6, 16, 6, 12), (("depth", (1, 2, 3)),)),
    # MetaFormer built from its class (caformer_s18's builder fixes the depths): separable-conv
    # stages, then attention stages; StarReLU MLPs (s·relu(x)² + b, one activation unit)
    Family("caformer_s18", "timm", "metaformer.MetaFormer", 224, Counts(2, 2, 14, 4, 6),
           _METAFORMER + (("token_mixers", ("timm:metaformer.SepConv",) * 2
                           + ("timm:metaformer.Attention",) * 2),
                          ("norm_layers", ("timm:metaformer.LayerNorm2dNoBias",) * 2
                           + ("timm:metaformer.LayerNormNoBias",) * 2)),
           found=Counts(2, 2, 14, 2, 4),
           unsupported="separable-conv stages: their token mixer is a depthwise conv (no "
           "attention) and their MLPs are 1x1 Convs over [B, C, H, W] maps, so those 2 MLPs and "
           "their residuals are not found; the attention stages' blocks are"),
    Family("convformer_s18", "timm", "metaformer.MetaFormer", 224, Counts(0, 0, 14, 4, 4),
           _METAFORMER + (("token_mixers", "timm:metaformer.SepConv"),
                          ("norm_layers", "timm:metaformer.LayerNorm2dNoBias")),
           unsupported="no attention: every token mixer is a separable depthwise conv and every "
           "MLP 1x1 Convs over [B, C, H, W] maps; its 14 LayerNorms are found (`--pts` applies)"),
    Family("coatnet_0_rw", "timm", "coatnet_0_rw_224", 224, Counts(9, 9, 19, 9, 18),
           tags=("big",), unsupported="conv attention on maps: TransformerBlock2d's Attention2d "
           "takes q, k and v from one 1x1 Conv over [B, C, H, W] (no MatMul/Gemm projection), with "
           "a relative position bias, and its ConvMlp is 1x1 Convs; its 19 LayerNorm2d are found "
           "(`--pts` applies)"),
    # nested hierarchy: attention inside each of the image's blocks (a Softmax per block of
    # tokens), conv + max-pool aggregation between levels; built from the class (nest_tiny's
    # builder sets the depths itself)
    Family("nest_tiny", "timm", "nest.Nest", 224, Counts(3, 3, 9, 3, 6),
           (("embed_dims", (64, 128, 256)), ("num_heads", (2, 4, 8)), ("depths", (1, 1, 1)),
            ("drop_path_rate", 0.0))),
    # conv blocks (multi-head conv attention: grouped convs, no Softmax) and transformer blocks
    # with spatially-reduced attention, all BatchNorm; 15.7 M parameters at depths 1-2-5-1
    Family("nextvit_small", "timm", "nextvit_small", 224, Counts(3, 3, 0, 9, 6),
           (("depths", (1, 2, 5, 1)),), patch_convs=5, tags=("big",),
           found=Counts(3, 3, 0, 0, 3), unsupported="conv MLPs: every ConvMlp is 1x1 Convs over "
           "[B, C, H, W] maps, so none of the 9 MLPs (nor the transformer blocks' MLP residuals) "
           "is found; the 3 transformer blocks' attentions are"),
    Family("efficientformer_l1", "timm", "efficientformer_l1", 224, Counts(1, 1, 3, 5, 2),
           (("depths", (1, 1, 1, 2)),), heads=2, patch_convs=2, found=Counts(1, 1, 3, 1, 2),
           unsupported="pooling (PoolFormer) stages: MetaBlock2d mixes tokens by average pooling "
           "and its ConvMlpWithNorm is 1x1 Convs over [B, C, H, W] maps, so none of those 4 MLPs "
           "is found; the last stage's attention block (MetaBlock1d) is"),
    Family("visformer_tiny", "timm", "visformer_tiny", 224, Counts(2, 2, 0, 3, 5),
           (("depth", (1, 1, 1)),),
           unsupported="conv attention: q, k and v come from one 1x1 Conv over the [B, C, H, W] "
           "map (no MatMul/Gemm projection), the MLPs are convs too, BatchNorm not LayerNorm"),
    Family("swiftformer_xs", "timm", "swiftformer_xs", 224, Counts(4, 4, 0, 4, 8),
           (("layers", (1, 1, 1, 1)),), heads=2,
           unsupported="efficient additive attention: a learned vector scores the L2-normalised "
           "queries, their weighted sum (one global query) multiplies the keys elementwise; no "
           "Softmax, no Q·Kᵀ; BatchNorm, conv MLPs"),
    Family("shvit_s1", "timm", "shvit_s1", 224, Counts(2, 2, 0, 7, 9), (("depth", (1, 1, 1)),),
           unsupported="single-head attention over a map's first channels: q, k, v from one 1x1 "
           "Conv + BatchNorm over the GroupNorm'd [B, C, H, W] slice, the other channels passed "
           "through; conv FFNs, no LayerNorm"),
)
