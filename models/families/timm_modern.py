"""Today's timm exports (session 7): rotary position embeddings, register tokens, RMSNorm with
SwiGLU, sub-LN, attention pooling; small configs (random weights, layer-scale raised from the
1e-5 init to 0.1 where the model has one, so the blocks reach the output, as BEiTv2's entry).

timm's EVA-based models (DINOv3, the RoPE ViTs, PE) export with dynamo only: TorchScript fails
on their `is_causal` tensor, as for EVA-02; AIMv2's `aten::rms_norm` has no TorchScript (opset 17)
symbolic, NaFlexViT's antialiased bicubic position resize neither.
"""

from __future__ import annotations

from onnxvq.models.families.base import Family, vit
from onnxvq.models.family_modules import Counts

_SMALL = (("embed_dim", 192), ("depth", 2), ("num_heads", 3))
_LS = (("init_values", 0.1),)

TIMM_MODERN: tuple[Family, ...] = (
    # DINOv3: rotary q/k (the patch tokens only; class and 4 register tokens pass unrotated),
    # layer-scale, no classifier
    Family("dinov3_small", "timm", "vit_small_patch16_dinov3", 224, vit(2),
           (("depth", 2),) + _LS, exporter="dynamo", heads=0, tags=("ci",)),
    # RoPE-ViT (naver-ai): axial and mixed (learned per-head frequencies) rotary attention
    Family("rope_vit", "timm", "vit_base_patch16_rope_224", 224, vit(2), _SMALL + _LS,
           exporter="dynamo"),
    Family("rope_mixed", "timm", "vit_base_patch16_rope_mixed_224", 224, vit(2), _SMALL + _LS,
           exporter="dynamo"),
    Family("rope_reg1_gap", "timm", "vit_base_patch16_rope_reg1_gap_256", 256, vit(2),
           _SMALL + _LS, exporter="dynamo"),  # one register token, average pooling
    # Perception Encoder: norm_pre, rotary attention, an attention-pooling (MAP) head: a block
    # of its own (one residual), then the projection
    Family("pe_core_tiny", "timm", "vit_pe_core_tiny_patch16_384", 384, Counts(3, 3, 7, 3, 5),
           (("depth", 2),), exporter="dynamo"),
    # NaFlexViT with a plain image input: the patches cut by Reshape/Transpose and embedded by a
    # Linear (quantized as any linear; no patch Conv), 4 register tokens, average pooling
    Family("naflexvit", "timm", "naflexvit_base_patch16_gap", 224, vit(2), _SMALL + _LS,
           exporter="dynamo", patch_convs=0),
    # BEiT-3: sub-LN, a LayerNorm before each attention's output projection and each fc2
    Family("beit3", "timm", "beit3_base_patch16_224", 224, Counts(2, 2, 9, 2, 4), _SMALL,
           tags=("ci",)),
    # AIMv2: RMSNorm everywhere (the patch embedding's too), SwiGLU with two fc1 linears, no
    # class token, average pooling, no classifier; --pts has no RMSNorm form (refused by name)
    Family("aimv2", "timm", "aimv2_large_patch14_224", 224, Counts(2, 2, 0, 2, 4, rmsnorms=6),
           _SMALL, exporter="dynamo", heads=0, tags=("ci",)),
    # SAM2's Hiera image encoder (HieraDet; one block a stage but two in the third, its second
    # global, dim 48): q max-pooled by a MaxPool over the token map at each stage transition,
    # the shortcut pool(proj(norm(x))) (before: 2 of 5 attentions, 7 of 10 residuals found)
    Family("sam2_hiera_tiny", "timm", "sam2_hiera_tiny", 224, Counts(5, 5, 11, 5, 10),
           (("stages", (1, 1, 2, 1)), ("global_att_blocks", (3,)), ("embed_dim", 48)), heads=0),
    Family("hieradet_small", "timm", "hieradet_small", 224, Counts(5, 5, 11, 5, 10),
           (("stages", (1, 1, 2, 1)), ("global_att_blocks", (3,)), ("embed_dim", 48)) + _LS),
    # VLM vision encoders (their smallest forms at dim 192, depth 2): EVA blocks with rotary
    # attention, then the LLM-side merger / aligner (norm, fc1, GELU, fc2: one more MLP) to
    # `out_features`; the token sequence is the output (no classifier)
    Family("qwen3_vit_enc", "timm", "qwen3_vit_88m_enc", 224, Counts(2, 2, 5, 3, 4),
           _SMALL + (("out_features", 256),), exporter="dynamo", heads=0),
    # Gemma4 (167M form's layout at dim 192; 192 px: a multiple of patch 16 times its 3x3 soft
    # pool): RMSNorm before and after each branch and on q, k and v, 2-D rotary tables computed
    # in the graph (Cos/Sin of the patch positions), a GELU-gated MLP, patches embedded by a
    # Linear. Clipped linears off: with them, dynamo writes a graph ORT rejects (a clamp bound
    # read before it is computed). Its soft-token pool scales by √192: atol 1e-3 (1.5e-4)
    Family("gemma4_vit_enc", "timm", "gemma4_vit_167m_enc", 192,
           Counts(2, 2, 0, 2, 4, rmsnorms=14),
           _SMALL + (("intermediate_size", 768), ("use_clipped_linears", False)),
           exporter="dynamo", heads=0, patch_convs=0, atol=1e-3),
    # DeepSeek: RMSNorms (fp32), SwiGLU (packed fc1); 210 px: a multiple of patch 14 times the
    # aligner's 3x3 downsampling
    Family("deepseek_vit_enc", "timm", "deepseek_vit_412m_enc", 210,
           Counts(2, 2, 0, 3, 4, rmsnorms=5), _SMALL + (("out_features", 256),),
           exporter="dynamo", heads=0),
)
