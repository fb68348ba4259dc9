"""The torchvision families (`arch`: a builder of family_modules._torchvision; random weights)."""

from __future__ import annotations

from onnxvq.models.families.base import SWIN_SMALL, Family, vit
from onnxvq.models.family_modules import Counts

_VIT_H14 = (("patch_size", 14), ("num_layers", 2), ("num_heads", 4), ("hidden_dim", 128),
            ("mlp_dim", 512))

TORCHVISION: tuple[Family, ...] = (
    Family("tv_swin_v2_t", "torchvision", "swin_v2", 256, Counts(5, 5, 15, 5, 10),
           SWIN_SMALL + (("window_size", (8, 8)),)),
    Family("tv_maxvit", "torchvision", "maxvit", 224, Counts(8, 8, 17, 8, 16),
           (("stem_channels", 32), ("partition_size", 7), ("block_channels", [32, 64, 128, 256]),
            ("block_layers", [1, 1, 1, 1]), ("head_dim", 16))),  # block + grid attention
    # torchvision's Swin v1 (the v2 block above) and ViT at vit_h_14's patch 14 (vit_l_16 and
    # vit_h_14 are the vit_b_16 class at other sizes: the same graph, deeper and wider)
    Family("tv_swin_t", "torchvision", "swin", 224, Counts(5, 5, 15, 5, 10),
           SWIN_SMALL + (("window_size", (7, 7)),)),
    Family("tv_vit_h14", "torchvision", "vit", 224, vit(2), _VIT_H14),
    # the same nn.MultiheadAttention through the other exporters (multihead-attention-layout)
    Family("tv_vit_h14_dynamo", "torchvision", "vit", 224, vit(2), _VIT_H14, exporter="dynamo"),
    Family("tv_vit_h14_ts18", "torchvision", "vit", 224, vit(2), _VIT_H14,
           exporter="torchscript18"),
)
