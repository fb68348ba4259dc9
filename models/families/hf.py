"""The Hugging Face families (`arch`: a config kind of family_modules._HF_KINDS; random weights)."""

from __future__ import annotations

from onnxvq.models.families.base import HF_SMALL, SWIN_SMALL, Family, vit
from onnxvq.models.family_modules import Counts

HUGGINGFACE: tuple[Family, ...] = (
    Family("hf_dinov2", "huggingface", "dinov2", 224, vit(2),
           (("hidden_size", 192), ("num_hidden_layers", 2), ("num_attention_heads", 3),
            ("intermediate_size", 768), ("patch_size", 14)), tags=("ci",)),
    Family("hf_swin", "huggingface", "swin", 224, Counts(5, 5, 15, 5, 10),
           SWIN_SMALL + (("window_size", 7),)),
    Family("hf_clip_vision", "huggingface", "clip_vision", 224, Counts(2, 2, 6, 2, 4),
           HF_SMALL, heads=0),  # QuickGELU MLPs; the pooled, post-LayerNorm'd class token
    Family("hf_siglip_vision", "huggingface", "siglip_vision", 224, Counts(3, 3, 6, 3, 5),
           HF_SMALL, heads=0),  # tanh GELU; the pooling head is a torch nn.MultiheadAttention
    Family("hf_beit", "huggingface", "beit", 224, Counts(2, 2, 5, 2, 4),
           HF_SMALL + (("use_relative_position_bias", True),)),
    Family("hf_data2vec_vision", "huggingface", "data2vec_vision", 224, Counts(2, 2, 5, 2, 4),
           HF_SMALL + (("use_relative_position_bias", True),)),
    Family("hf_swinv2", "huggingface", "swinv2", 256, Counts(5, 5, 15, 5, 10),
           SWIN_SMALL + (("window_size", 8),)),  # cosine attention, res-post-norm
    Family("hf_deit_distilled", "huggingface", "deit_distilled", 224, vit(2), HF_SMALL,
           heads=2),  # the class and distillation heads (their mean is the logits)
    # mask_ratio 0: the export keeps the per-image random shuffle of the patch tokens
    # (RandomUniformLike -> TopK -> GatherElements); the class token, returned, does not depend on
    # their order, the other rows do
    Family("hf_vit_mae", "huggingface", "vit_mae", 224, vit(2),
           HF_SMALL + (("mask_ratio", 0.0),), heads=0),
    Family("hf_pvt_v2", "huggingface", "pvt_v2", 224, Counts(4, 4, 19, 4, 8),
           (("depths", (1, 1, 1, 1)),)),
    Family("hf_mobilevit", "huggingface", "mobilevit", 256, Counts(9, 9, 21, 9, 18)),
    # windowed attention with relative positions, then a global block; the feature map returned
    Family("hf_vitdet", "huggingface", "vitdet", 224, Counts(2, 2, 4, 2, 4),
           (("hidden_size", 192), ("num_hidden_layers", 2), ("num_attention_heads", 3),
            ("mlp_ratio", 4), ("patch_size", 16), ("pretrain_image_size", 224),
            ("window_block_indices", (0,)), ("window_size", 7),
            ("use_relative_position_embeddings", True)), heads=0),
    # a ViT encoder read at 4 depths by a conv reassemble/fusion decoder (depth map)
    Family("hf_dpt", "huggingface", "dpt", 224, Counts(4, 4, 8, 4, 8),
           (("hidden_size", 192), ("num_hidden_layers", 4), ("num_attention_heads", 3),
            ("intermediate_size", 768), ("patch_size", 16), ("backbone_out_indices", (0, 1, 2, 3)),
            ("neck_hidden_sizes", (24, 48, 96, 192)), ("fusion_hidden_size", 64)), heads=0),
    # dynamo: TorchScript cannot export its antialiased bicubic position-embedding interpolation
    Family("hf_dinov2_reg4", "huggingface", "dinov2_registers", 224, vit(2),
           HF_SMALL[:4] + (("patch_size", 14), ("num_register_tokens", 4)), exporter="dynamo"),
)
