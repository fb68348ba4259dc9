"""The torch side of the grown corpus (models/families/): each family's module, built from its
library at the family's sizes, and the recognition counts read off that module (`family_counts`,
what `onnxvq inspect` must find on the export)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from onnxvq.models.corpus import CorpusError

if TYPE_CHECKING:
    from onnxvq.models.families import Family


@dataclass(frozen=True)
class Counts:
    blocks: int
    attentions: int
    layernorms: int
    mlps: int
    residual_adds: int
    rmsnorms: int = 0  # AIMv2's, the VLM encoders'; inspect reports them where there are any

    def as_dict(self) -> dict[str, int]:
        return dict(blocks=self.blocks, attentions=self.attentions, layernorms=self.layernorms,
                    mlps=self.mlps, residual_adds=self.residual_adds,
                    **({"rmsnorms": self.rmsnorms} if self.rmsnorms else {}))


_BLOCKS = {"Block", "EvaBlock", "LayerScaleBlock", "LayerScaleBlockClassAttn",
           "SwinTransformerV2Block", "LevitBlock", "LevitDownsample", "SwinTransformerBlockV2",
           "Dinov2Layer", "SwinLayer", "XCABlock", "ClassAttentionBlock",
           "SwinTransformerV2CrBlock", "AttentionPoolLatent", "TinyVitBlock", "HieraBlock",
           "PartitionAttentionCl", "MultiScaleBlock", "CLIPEncoderLayer", "SiglipEncoderLayer",
           "SiglipMultiheadAttentionPoolingHead", "BeitLayer", "Data2VecVisionLayer",
           "PartitionAttentionLayer", "SpatialBlock", "ChannelBlock",
           "CrossAttentionBlock", "AttentionBlock", "GlobalContextVitBlock", "SerialBlock",
           "LinearTransformerBlock", "EfficientVitBlock", "SwinTransformerBlock",
           "EncoderBlock", "Swinv2Layer", "FocalNetBlock", "PvtV2BlockLayer",
           "MobileViTTransformerLayer", "VitDetLayer", "YolosLayer", "DPTViTLayer",
           "Dinov2WithRegistersLayer", "DeiTLayer", "ViTMAELayer", "Gemma4Block",
           "DeepseekVitBlock", "MetaBlock1d",
           "TransformerBlock2d", "SegformerLayer", "IJepaLayer",
           "ViTMSNLayer", "OwlViTEncoderLayer", "Owlv2EncoderLayer",
           "TransformerLayer", "NextTransformerBlock", "CvtLayer", "ViTLayer",
           "DonutSwinLayer", "PvtLayer", "HieraLayer"}
_ATTENTIONS = {"Attention", "EvaAttention", "TalkingHeadAttn", "ClassAttn", "WindowAttention",
               "AttentionDownsample", "ShiftedWindowAttentionV2", "Dinov2Attention",
               "SwinAttention", "XCA", "WindowMultiHeadAttention", "AttentionPoolLatent",
               "MaskUnitAttention", "AttentionCl", "Attention2d", "Attention2dDownsample",
               "MultiScaleAttention", "CLIPAttention", "SiglipAttention", "MultiheadAttention",
               "BeitAttention", "Data2VecVisionAttention", "RelativePositionalMultiHeadAttention",
               "LocallyGroupedAttn", "GlobalSubSampleAttn", "ChannelAttention",
               "CrossAttention", "WindowAttentionGlobal", "GPSA", "MHSA",
               "FactorAttnConvRelPosEnc", "LinearSelfAttention", "LiteMLA",
               "LocalWindowAttention", "ShiftedWindowAttention", "Swinv2Attention",
               "PvtV2SelfAttention", "MobileViTAttention", "VitDetAttention", "YolosAttention",
               "DPTViTAttention", "Dinov2WithRegistersAttention", "DeiTAttention",
               "ViTMAEAttention", "AttentionRope", "Gemma4Attention",
               "EfficientAdditiveAttention", "SHSA",
               "SegformerAttention", "LevitAttention", "LevitAttentionSubsample",
               "IJepaAttention", "ViTMSNAttention", "OwlViTAttention", "Owlv2Attention",
               "EfficientAttention", "CvtAttention", "ViTAttention",
               "DonutSwinAttention", "PvtAttention", "HieraMaskUnitAttention"}
_MLPS = {"Mlp", "GluMlp", "LevitMlp", "MLP", "Dinov2MLP", "SwinMLP", "NormMlp", "ConvMlpWithNorm",
         "CLIPMLP", "SiglipMLP", "BeitMLP", "Data2VecVisionIntermediate", "MlpWithDepthwiseConv",
         "GeGluMlp", "ConvMlp", "MLPBlock", "Swinv2Intermediate",
         "PvtV2ConvFeedForwardNetwork", "MobileViTIntermediate", "VitDetMlp", "YolosIntermediate",
         "DPTViTIntermediate", "Dinov2WithRegistersMLP", "DeiTMLP", "ViTMAEMLP", "SwiGLU",
         "Gemma4GatedMlp", "Qwen3VitPatchMerger", "DeepseekVitAligner",  # the VLM encoders'
         # merger / aligner: the projection to the LLM's width, fc1 GELU fc2
         "SpatialMlp", "FFN", "YolosMLPPredictionHead", "SegformerMixMLP", "LevitMLPLayer",
         "IJepaMLP", "ViTMSNMLP", "OwlViTMLP", "Owlv2MLP",
         "CvtIntermediate", "ViTMLP", "DonutSwinIntermediate", "PvtFFN", "HieraMlp"}
# blocks whose token mixer is an attention in some stages only ((timm module, class): its
# attribute; None, Identity or a conv mixer elsewhere): the others are an MLP and its residual
_OPTIONAL = {("efficientformer_v2", "EfficientFormerV2Block"): "token_mixer",
             ("visformer", "Block"): "attn", ("metaformer", "MetaFormerBlock"): "token_mixer"}
# attentions whose MLPs compute a position bias, a constant in the export (SwinV2-CR's meta MLP,
# MaxxViT's RelPosMlp)
_BIAS_NETS = {"WindowMultiHeadAttention", "AttentionCl"}


def family_counts(module) -> Counts:
    """Blocks, attention modules, nn.LayerNorm, MLP modules, two residual Adds per block and
    RMSNorm modules (timm's RmsNorm, torch's nn.RMSNorm, the VLM encoders' own), read off the
    torch module. One residual: LeViT's downsample blocks and SigLIP's attention
    pools (timm's and Hugging Face's; their MLP's). XCiT's conv LPI residual is not counted
    (neither attention nor MLP), nor FastViT's RepMixer blocks' (no attention).
    EfficientFormerV2's blocks without attention are an MLP and its residual. CrossViT's
    cross-attention blocks have one residual (no MLP); its MultiScaleBlock is a stage of them,
    not MViTv2's block. DPT's depth head reads the encoder's layers, never its final norm."""
    import torch

    names = Counter(type(m).__name__ for m in module.modules())
    stages = sum(type(m).__name__ == "MultiScaleBlock" and "crossvit" in type(m).__module__
                 for m in module.modules())
    bias_mlps = {id(m) for a in module.modules() if type(a).__name__ in _BIAS_NETS
                 for m in a.modules() if type(m).__name__ in _MLPS}
    mlps = sum(type(m).__name__ in _MLPS and id(m) not in bias_mlps for m in module.modules())
    mlps += names["PartitionAttentionLayer"]  # torchvision MaxViT's: an unnamed nn.Sequential
    attended, plain, named = _optional_attention(module)
    blocks = sum(names[n] for n in _BLOCKS) - named + attended - stages + _tnt_inner(module)
    blocks += names["SHSA"]  # SHViT: a BasicBlock with single-head attention
    blocks += names["LevitAttention"] + names["LevitAttentionSubsample"]  # HF LeViT: no block class
    mlps -= names["YolosForObjectDetection"]  # its box head is not in the exported logits
    layernorms = sum(isinstance(m, torch.nn.LayerNorm) for m in module.modules())
    layernorms -= names["DPTForDepthEstimation"]  # its encoder's final norm: unused, not exported
    pools = names["AttentionPoolLatent"] + names["SiglipMultiheadAttentionPoolingHead"]
    residual = 2 * blocks - names["LevitDownsample"] - names["LevitAttentionSubsample"] - pools
    residual += plain
    residual -= names["CrossAttentionBlock"] + 2 * names["SHSA"] - _shvit_residuals(module)
    rms = sum("rmsnorm" in type(m).__name__.lower() for m in module.modules())
    return Counts(blocks, sum(names[n] for n in _ATTENTIONS), layernorms, mlps, residual, rms)


def _optional_attention(module) -> tuple[int, int, int]:
    """(blocks of _OPTIONAL with an attention, without one, how many of them _BLOCKS names)."""
    attended = plain = named = 0
    for m in module.modules():
        attr = _OPTIONAL.get((type(m).__module__.rsplit(".", 1)[-1], type(m).__name__))
        if attr is not None:
            has = type(getattr(m, attr)).__name__ in _ATTENTIONS
            attended, plain, named = attended + has, plain + (not has), named + (
                type(m).__name__ in _BLOCKS)
    return attended, plain, named


def _tnt_inner(module) -> int:
    """TNT's Block is two transformer blocks: the inner one over each patch's pixel tokens
    (attn_in, mlp_in, two residuals), then the outer one over the patches."""
    return sum(type(m).__name__ == "Block" and hasattr(m, "attn_in") for m in module.modules())


def _shvit_residuals(module) -> int:
    """SHViT's Residual(SHSA) and Residual(FFN) wrappers (its PatchMerging has FFNs too)."""
    return sum(type(m).__name__ == "Residual" and type(getattr(m, "m", None)).__name__ in
               ("SHSA", "FFN") for m in module.modules())


def build(family: Family):
    """The seeded, eval-mode module with constant parameters spread (as export.py does)."""
    import timm
    import torch

    from onnxvq.models.export import _spread_constant_parameters

    torch.manual_seed(0)
    if family.source == "timm" and "." in family.arch:
        module = _timm_class(family).eval()
    elif family.source == "timm":
        module = timm.create_model(family.arch, pretrained=False, **dict(family.kwargs)).eval()
    elif family.source == "huggingface":
        module = _huggingface(family)
    elif family.source == "torchvision":
        module = _torchvision(family)
    else:
        raise CorpusError(f"{family.name}: unknown source {family.source!r}")
    _spread_constant_parameters(module)
    return module


def _timm_class(family: Family):
    """A timm model class (`arch` "module.Class") built from its own defaults and the family's
    kwargs, for the builders that fix the sizes they would be overridden by (nest_tiny, volo_d1,
    caformer_s18 pass `depths=` themselves). A kwarg value "timm:module.name" (also inside a
    tuple) is that timm object: MetaFormer's token mixer and norm classes."""
    import importlib

    def resolve(value):
        if isinstance(value, tuple):
            return tuple(resolve(v) for v in value)
        if isinstance(value, str) and value.startswith("timm:"):
            module, _, name = value[5:].rpartition(".")
            return getattr(importlib.import_module(f"timm.models.{module}"), name)
        return value

    module, _, name = family.arch.rpartition(".")
    cls = getattr(importlib.import_module(f"timm.models.{module}"), name)
    return cls(**{k: resolve(v) for k, v in family.kwargs})


def _huggingface(family: Family):
    """A Hugging Face model from its config kind and sizes, returning one plain tensor: a
    classifier's logits, a vision tower's `pooler_output` (CLIP's class token, SigLIP's
    attention-pooling head), an encoder's class token (ViTMAE: its rows come out in a random
    order, the class token's does not) or feature map (ViTDet), a depth map (DPT)."""
    import transformers

    config_name, model_name, output = _HF_KINDS[family.arch]
    config_cls, model_cls = getattr(transformers, config_name), getattr(transformers, model_name)
    labels = {"num_labels": 10} if output == "logits" else {}
    # YOLOS and Hiera take (H, W)
    size = [family.image] * 2 if family.arch in ("yolos", "hiera") else family.image
    config = config_cls(image_size=size, **labels, **dict(family.kwargs))
    return _Output(model_cls(config), output).eval()


# kind: (config class, model class, what the export returns)
_HF_KINDS = {"dinov2": ("Dinov2Config", "Dinov2ForImageClassification", "logits"),
             "swin": ("SwinConfig", "SwinForImageClassification", "logits"),
             "clip_vision": ("CLIPVisionConfig", "CLIPVisionModel", "pooler_output"),
             "siglip_vision": ("SiglipVisionConfig", "SiglipVisionModel", "pooler_output"),
             "beit": ("BeitConfig", "BeitForImageClassification", "logits"),
             "data2vec_vision": ("Data2VecVisionConfig", "Data2VecVisionForImageClassification",
                                 "logits"),
             "dinov2_registers": ("Dinov2WithRegistersConfig",
                                  "Dinov2WithRegistersForImageClassification", "logits"),
             "swinv2": ("Swinv2Config", "Swinv2ForImageClassification", "logits"),
             "deit_distilled": ("DeiTConfig", "DeiTForImageClassificationWithTeacher", "logits"),
             "mobilevit": ("MobileViTConfig", "MobileViTForImageClassification", "logits"),
             "pvt_v2": ("PvtV2Config", "PvtV2ForImageClassification", "logits"),
             "vit_mae": ("ViTMAEConfig", "ViTMAEModel", "class_token"),
             "yolos": ("YolosConfig", "YolosForObjectDetection", "logits"),
             "vitdet": ("VitDetConfig", "VitDetModel", "last_hidden_state"),
             "dpt": ("DPTConfig", "DPTForDepthEstimation", "predicted_depth"),
             "segformer": ("SegformerConfig", "SegformerForImageClassification", "logits"),
             "levit": ("LevitConfig", "LevitForImageClassification", "logits"),
             "ijepa": ("IJepaConfig", "IJepaForImageClassification", "logits"),
             "vit_msn": ("ViTMSNConfig", "ViTMSNForImageClassification", "logits"),
             "owlvit_vision": ("OwlViTVisionConfig", "OwlViTVisionModel", "pooler_output"),
             "owlv2_vision": ("Owlv2VisionConfig", "Owlv2VisionModel", "pooler_output"),
             "cvt": ("CvtConfig", "CvtForImageClassification", "logits"),
             # session 8's sweep (benchmarks/sweep_exports.py)
             "vit": ("ViTConfig", "ViTForImageClassification", "logits"),
             "deit": ("DeiTConfig", "DeiTForImageClassification", "logits"),
             "donut_swin": ("DonutSwinConfig", "DonutSwinModel", "pooler_output"),
             "pvt": ("PvtConfig", "PvtForImageClassification", "logits"),
             "mobilevitv2": ("MobileViTV2Config", "MobileViTV2ForImageClassification", "logits"),
             "hiera": ("HieraConfig", "HieraForImageClassification", "logits"),
             "depth_anything": ("DepthAnythingConfig", "DepthAnythingForDepthEstimation",
                                "predicted_depth"),
             "swin_backbone": ("SwinConfig", "SwinBackbone", "feature_map"),
             "dinov2_backbone": ("Dinov2Config", "Dinov2Backbone", "feature_map")}


def _Output(model, output: str):
    """A Hugging Face model returning one field of its output (a plain tensor to export)."""
    import torch

    class Output(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.model = inner

        def forward(self, x):
            out = self.model(pixel_values=x)
            if output == "class_token":
                return out.last_hidden_state[:, 0]
            if output == "feature_map":  # a backbone's last stage map (detectors read it)
                return out.feature_maps[-1]
            return getattr(out, output)

    return Output(model)


def _torchvision(family: Family):
    """torchvision's Swin (v1 or v2), MaxViT or ViT at the family's sizes (the builders take no
    depth override; vit_l_16 / vit_h_14 are the ViT class at other sizes)."""
    kw = dict(family.kwargs)
    if family.arch == "maxvit":
        from torchvision.models.maxvit import MaxVit

        return MaxVit(input_size=(family.image, family.image), stochastic_depth_prob=0.0,
                      num_classes=10, **kw).eval()
    if family.arch == "vit":
        from torchvision.models.vision_transformer import VisionTransformer

        return VisionTransformer(image_size=family.image, num_classes=10, **kw).eval()
    from torchvision.models import swin_transformer as st

    v2 = family.arch == "swin_v2"
    return st.SwinTransformer(patch_size=[4, 4], embed_dim=kw["embed_dim"],
                              depths=list(kw["depths"]), num_heads=list(kw["num_heads"]),
                              window_size=list(kw["window_size"]), stochastic_depth_prob=0.0,
                              block=st.SwinTransformerBlockV2 if v2 else st.SwinTransformerBlock,
                              downsample_layer=st.PatchMergingV2 if v2 else st.PatchMerging,
                              num_classes=10).eval()
