"""The timm families (`timm.create_model(arch, **kwargs)`, random weights)."""

from __future__ import annotations

from onnxvq.models.families.base import SWIN_SMALL, Family, vit
from onnxvq.models.family_modules import Counts

TIMM: tuple[Family, ...] = (
    Family("deit_tiny_distilled", "timm", "deit_tiny_distilled_patch16_224", 224, vit(2),
           (("depth", 2),), heads=2, tags=("ci",)),
    Family("deit_tiny_distilled_dynamo", "timm", "deit_tiny_distilled_patch16_224", 224,
           vit(2), (("depth", 2),), exporter="dynamo", heads=2),
    # dynamo at the opset a user asks for (torch.onnx.export(..., opset_version=21))
    Family("deit_tiny_dynamo21", "timm", "deit_tiny_patch16_224", 224, vit(2), (("depth", 2),),
           exporter="dynamo21", tags=("ci",)),
    Family("deit3_small", "timm", "deit3_small_patch16_224", 224, vit(2), (("depth", 2),)),
    Family("beit_tiny", "timm", "beit_base_patch16_224", 224, vit(2),
           (("embed_dim", 192), ("depth", 2), ("num_heads", 3))),
    Family("dinov2_reg4", "timm", "vit_small_patch14_reg4_dinov2", 518, vit(2),
           (("depth", 2),), heads=0, tags=("ci",)),
    Family("mobilevit_xxs", "timm", "mobilevit_xxs", 256, Counts(9, 9, 21, 9, 18), tags=("ci",)),
    Family("pit_ti", "timm", "pit_ti_224", 224, Counts(12, 12, 25, 12, 24)),
    Family("deit_tiny_external", "timm", "deit_tiny_patch16_224", 224, vit(2),
           (("depth", 2),), external=True),
    Family("deit_tiny_dynamic_hw", "timm", "deit_tiny_patch16_224", 224, vit(2),
           (("depth", 2), ("dynamic_img_size", True)), dynamic_hw=True, tags=("ci",)),
    Family("swinv2_tiny", "timm", "swinv2_tiny_window8_256", 256, Counts(5, 5, 15, 5, 10),
           (("embed_dim", 48), ("depths", (1, 1, 2, 1)), ("num_heads", (3, 6, 12, 24))),
           tags=("ci",)),  # cosine attention, res-post-norm blocks
    Family("swinv2_tiny_dynamo", "timm", "swinv2_tiny_window8_256", 256, Counts(5, 5, 15, 5, 10),
           (("embed_dim", 48), ("depths", (1, 1, 2, 1)), ("num_heads", (3, 6, 12, 24))),
           exporter="dynamo"),
    Family("levit_128s", "timm", "levit_128s", 224, Counts(11, 11, 0, 11, 20), heads=2,
           patch_convs=4, tags=("ci",)),
    Family("cait_xxs", "timm", "cait_xxs24_224", 224, Counts(4, 4, 9, 4, 8), (("depth", 2),)),
    Family("eva02_tiny", "timm", "eva02_tiny_patch14_224", 224, vit(2), (("depth", 2),),
           exporter="dynamo",  # TorchScript fails on timm's `is_causal` tensor
           heads=0),  # rotary q/k, SwiGLU MLP; no classifier (the fc_norm'd pooled features)
    # qk-norm attention: a LayerNorm on each head's q and k between the projection and Q·Kᵀ
    Family("vit_qknorm", "timm", "vit_small_patch16_224", 224, Counts(2, 2, 9, 2, 4),
           (("depth", 2), ("qk_norm", True)), tags=("ci",)),
    Family("vit_qknorm_dynamo", "timm", "vit_small_patch16_224", 224, Counts(2, 2, 9, 2, 4),
           (("depth", 2), ("qk_norm", True)), exporter="dynamo"),
    Family("clip_b16", "timm", "vit_base_patch16_clip_224", 224, Counts(2, 2, 6, 2, 4),
           (("depth", 2), ("embed_dim", 192), ("num_heads", 3))),  # norm_pre before the blocks
    # SigLIP's attention-pooling head (MAP: a learned query attends to the tokens, then an MLP
    # with its residual): a block of its own, one residual; no classifier
    Family("siglip_b16", "timm", "vit_base_patch16_siglip_224", 224, Counts(3, 3, 6, 3, 5),
           (("depth", 2), ("embed_dim", 192), ("num_heads", 3)), heads=0),
    # cross-covariance attention (softmax over a head's channels, L2-normalised q and k over the
    # tokens) with a conv LPI branch, then two class-attention blocks
    Family("xcit_nano", "timm", "xcit_nano_12_p16_224", 224, Counts(4, 4, 11, 4, 8),
           (("depth", 2),)),
    Family("swinv2_cr_tiny", "timm", "swinv2_cr_tiny_ns_224", 224, Counts(5, 5, 18, 5, 10),
           SWIN_SMALL),  # cosine attention, res-post-norm, stage norms
    Family("tiny_vit_5m", "timm", "tiny_vit_5m_224", 224, Counts(10, 10, 21, 10, 20)),
    # max-pooled queries and projected shortcuts at each stage transition
    Family("hiera_tiny", "timm", "hiera_tiny_224", 224, Counts(4, 4, 9, 4, 8),
           (("stages", (1, 1, 1, 1)),)),
    # block (window) and grid attention, tanh GELU, after MBConv stages
    Family("maxvit_tiny", "timm", "maxvit_tiny_tf_224", 224, Counts(8, 8, 17, 8, 16),
           (("depths", (1, 1, 1, 1)),)),
    Family("efficientformerv2_s0", "timm", "efficientformerv2_s0", 224, Counts(4, 5, 0, 14, 18),
           heads=2, unsupported="conv attention: Attention2d's q, k and v are 1x1 Convs (with "
           "BatchNorm) over [B, C, H, W] maps, a depthwise conv on v and talking-head convs on the "
           "scores; recognition needs MatMul/Gemm projections (MLPs are 1x1 convs too)"),
    Family("mvitv2_tiny", "timm", "mvitv2_tiny", 224, Counts(10, 10, 51, 10, 20), tags=("big",),
           unsupported="pooling attention: q, k and v are each pooled by a strided depthwise "
           "Conv and LayerNorm'd before Q·Kᵀ, and the decomposed relative positions are Einsum "
           "products scattered into the scores; the attention matcher traces q, k and v to a "
           "projection through elementwise and layout ops only (no Conv)"),
    # spatial-reduction attention (k, v from a strided Conv + LayerNorm of the tokens) and an
    # MLP with a depthwise 3x3 Conv between fc1 and its GELU
    Family("pvt_v2_b0", "timm", "pvt_v2_b0", 224, Counts(4, 4, 19, 4, 8),
           (("depths", (1, 1, 1, 1)),), tags=("ci",)),
    Family("pvt_v2_b0_dynamo", "timm", "pvt_v2_b0", 224, Counts(4, 4, 19, 4, 8),
           (("depths", (1, 1, 1, 1)),), exporter="dynamo"),
    # locally-grouped (windowed) and global sub-sampled attention, a conv position encoding
    Family("twins_svt_small", "timm", "twins_svt_small", 224, Counts(5, 5, 16, 5, 10),
           (("depths", (1, 1, 2, 1)),)),
    Family("twins_pcpvt_small", "timm", "twins_pcpvt_small", 224, Counts(4, 4, 16, 4, 8),
           (("depths", (1, 1, 1, 1)),)),
    # window attention and channel attention (Softmax over a head's channels, as XCiT's)
    Family("davit_tiny", "timm", "davit_tiny", 224, Counts(8, 8, 21, 8, 16),
           (("depths", (1, 1, 1, 1)), ("embed_dims", (48, 96, 192, 384)),
            ("num_heads", (2, 4, 8, 16)))),
    # layer-scale at 0.1, not BEiTv2's 1e-5 init (which leaves the blocks out of the output)
    Family("beitv2_tiny", "timm", "beitv2_base_patch16_224", 224, vit(2),
           (("embed_dim", 192), ("depth", 2), ("num_heads", 3), ("init_values", 0.1))),
    # four register tokens, global average pooling, layer-scale
    Family("vit_reg4_gap", "timm", "vit_medium_patch16_reg4_gap_256", 256, vit(2),
           (("depth", 2),)),
    Family("flexivit_small", "timm", "flexivit_small", 240, vit(2), (("depth", 2),)),
    # windowed and global attention with decomposed relative positions (Einsum), a conv neck
    Family("samvit_tiny", "timm", "samvit_base_patch16_224", 224, vit(2),
           (("embed_dim", 192), ("depth", 2), ("num_heads", 3), ("global_attn_indexes", (1,)))),
    # MBConv stages, then ViT blocks with GeGLU MLPs
    Family("vitamin_small", "timm", "vitamin_small_224", 224, Counts(14, 14, 51, 14, 28),
           tags=("big",)),
    # two branches (patch 12 and 16): self-attention blocks, then cross attention (a branch's
    # class token queries the other branch's tokens; one residual, no MLP)
    Family("crossvit_tiny", "timm", "crossvit_tiny_240", 240, Counts(4, 4, 12, 2, 6),
           (("depth", ((1, 1, 0),)),), heads=0, patch_convs=0),
    # EVA (the first; no rotary, plain MLP), average pooling; dynamo (TorchScript fails on timm's
    # `is_causal` tensor, as for EVA-02)
    Family("eva_tiny", "timm", "eva_giant_patch14_224", 224, vit(2),
           (("embed_dim", 192), ("depth", 2), ("num_heads", 3), ("mlp_ratio", 4.0)),
           exporter="dynamo"),
    # partly recognised: `found` is what inspect finds, `unsupported` what it misses
    Family("fastvit_sa12", "timm", "fastvit_sa12", 224, Counts(1, 1, 0, 4, 2),
           (("layers", (1, 1, 1, 1)),), patch_convs=0, found=Counts(1, 1, 0, 0, 1),
           unsupported="conv MLPs: ConvMlp is a depthwise 7x7 Conv then 1x1 Convs over [B, C, H, "
           "W] maps, not MatMul/Gemm linears, so none of its 4 MLPs (nor the attention block's "
           "MLP residual) is found; the attention of the last stage is, the RepMixer stages have "
           "none"),
    Family("convit_tiny", "timm", "convit_tiny", 224, Counts(2, 2, 5, 2, 4),
           (("depth", 2), ("local_up_to_layer", 1)), found=Counts(1, 1, 5, 2, 3), tags=("ci",),
           unsupported="gated positional self-attention (GPSA): the Q·Kᵀ Softmax is mixed with a "
           "second, positional Softmax by a learned sigmoid gate and renormalised by its "
           "ReduceSum before A·V, and the matcher follows the probabilities to A·V through "
           "value-preserving ops only; the plain attention blocks after it are found"),
    Family("gcvit_xxtiny", "timm", "gcvit_xxtiny", 224, Counts(12, 12, 33, 12, 24),
           tags=("big",), found=Counts(6, 6, 33, 12, 18),
           unsupported="global query attention: the 6 global blocks' queries are tokens generated "
           "from the stage's feature map by convs (FeatureBlock: MBConv and max pooling), not a "
           "projection of the block's input; the 6 local window blocks are found"),
    # refused by name: no Q·Kᵀ Softmax attention the matcher can trace
    Family("coat_lite_tiny", "timm", "coat_lite_tiny", 224, Counts(4, 4, 13, 4, 8),
           (("serial_depths", (1, 1, 1, 1)),),
           unsupported="factorised attention: a Softmax over the keys along the tokens, then "
           "kᵀ·v before q (no N x N score matrix), plus a depthwise-conv relative position term"),
    Family("efficientvit_b0", "timm", "efficientvit_b0", 224, Counts(2, 2, 1, 0, 4),
           (("depths", (1, 1, 1, 1, 1)),),
           unsupported="ReLU linear attention (MIT LiteMLA): q, k, v from 1x1 Convs with a "
           "multi-scale depthwise aggregation, ReLU kernels and no Softmax"),
    Family("efficientvit_m0", "timm", "efficientvit_m0", 224, Counts(3, 3, 0, 10, 6),
           (("depth", (1, 1, 1)),), patch_convs=4,
           unsupported="cascaded group attention (MSRA): each head's q, k, v are 1x1 Conv + "
           "BatchNorm over [B, C, H, W] windows with a depthwise conv on q, each head's input "
           "adding the previous head's output; no LayerNorm (BatchNorm)"),
    Family("focalnet_tiny_srf", "timm", "focalnet_tiny_srf", 224, Counts(12, 0, 29, 12, 24),
           tags=("big",), unsupported="focal modulation, no attention: each block's token mixer "
           "gates depthwise-conv contexts of growing size (no Softmax, no Q·Kᵀ); its 29 LayerNorms "
           "are found (`--pts` applies)"),
    Family("mobilevitv2_050", "timm", "mobilevitv2_050", 256, Counts(9, 9, 0, 9, 18),
           unsupported="separable self-attention: a 1x1 Conv scores each token, a Softmax over the "
           "tokens weights k into one context vector broadcast onto ReLU(v), no Q·Kᵀ; GroupNorm, "
           "not LayerNorm"),
)
