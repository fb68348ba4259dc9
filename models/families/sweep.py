"""Session 8's sweep (benchmarks/sweep_exports.py): the export variants and models the corpus
lacked, kept where they add a case recognition or export must hold to.

Export variants: TorchScript opset 18 with a static batch of 1 (what `torch.onnx.export` writes
without `dynamic_axes`), Hugging Face's SDPA attention at opset 14 (the lowest that exports it),
a 384 px input. Models: ViT-Betwixt (registers, average pooling), PiT distilled (two heads),
SigLIP with average pooling, CLIP with QuickGELU, the ResNet-26 hybrid ViT (the patch embedding
is a ResNet stem with standardised conv weights), Hugging Face's DonutSwin, PVT (v1) and Hiera;
LeViT in conv mode is refused by name.
"""

from __future__ import annotations

from onnxvq.models.families.base import HF_SMALL, SWIN_SMALL, Family, vit
from onnxvq.models.family_modules import Counts

_D2 = (("depth", 2),)
_TINY = (("embed_dim", 192), ("depth", 2), ("num_heads", 3))

SWEEP: tuple[Family, ...] = (
    # static batch 1 at opset 18: the batch dim is the constant 1 throughout the graph
    Family("deit_tiny_ts18_static1", "timm", "deit_tiny_patch16_224", 224, vit(2), _D2,
           exporter="torchscript18", static_batch=1, tags=("ci",)),
    Family("hf_vit_ts14", "huggingface", "vit", 224, vit(2), HF_SMALL, exporter="torchscript14"),
    Family("deit3_small_384", "timm", "deit3_small_patch16_384", 384, vit(2), _D2),
    Family("vit_betwixt_reg4", "timm", "vit_betwixt_patch16_reg4_gap_256", 256, vit(2), _D2),
    Family("pit_ti_distilled", "timm", "pit_ti_distilled_224", 224, Counts(12, 12, 25, 12, 24),
           heads=2),
    Family("vit_siglip_gap", "timm", "vit_base_patch16_siglip_gap_224", 224, vit(2), _TINY,
           heads=0),
    Family("vit_clip_quickgelu", "timm", "vit_base_patch16_clip_quickgelu_224", 224,
           Counts(2, 2, 6, 2, 4), _TINY),  # norm_pre, x·σ(1.702x) MLPs
    # the patch embedding is a ResNet-26 stem (weight-standardised convs: Sub/Div on the weights,
    # folded to 2 MiB constants, whose graphsurgeon warning broke `--json`); its stem conv counts
    Family("vit_small_r26_s32", "timm", "vit_small_r26_s32_224", 224, vit(2), _D2),
    Family("hf_donut_swin", "huggingface", "donut_swin", 224, Counts(5, 5, 14, 5, 10),
           SWIN_SMALL + (("window_size", 7),), heads=0, tags=("ci",)),  # no final norm
    Family("hf_pvt", "huggingface", "pvt", 224, Counts(4, 4, 16, 4, 8),
           (("depths", (1, 1, 1, 1)),)),  # spatial-reduction attention, plain MLPs
    Family("hf_hiera", "huggingface", "hiera", 224, Counts(4, 4, 9, 4, 8),
           (("depths", (1, 1, 1, 1)),)),  # mask-unit attention, pooled queries
    Family("levit_conv_128s", "timm", "levit_conv_128s", 224, Counts(11, 11, 0, 11, 20),
           heads=2, patch_convs=4,
           unsupported="LeViT in conv mode: q, k, v and the MLPs are 1x1 Convs (with BatchNorm, "
           "folded) over [B, C, H, W] maps, the scores a MatMul of reshaped maps; recognition "
           "needs MatMul/Gemm projections (timm's levit_128s, the linear mode, is supported)"),
)
