"""The torch side of the grown corpus (models/families.py): each family's module, built from its
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

    def as_dict(self) -> dict[str, int]:
        return dict(blocks=self.blocks, attentions=self.attentions, layernorms=self.layernorms,
                    mlps=self.mlps, residual_adds=self.residual_adds)


_BLOCKS = {"Block", "EvaBlock", "LayerScaleBlock", "LayerScaleBlockClassAttn",
           "SwinTransformerV2Block", "LevitBlock", "LevitDownsample", "SwinTransformerBlockV2",
           "Dinov2Layer", "SwinLayer", "XCABlock", "ClassAttentionBlock",
           "SwinTransformerV2CrBlock", "AttentionPoolLatent", "TinyVitBlock", "HieraBlock",
           "PartitionAttentionCl", "MultiScaleBlock", "CLIPEncoderLayer", "SiglipEncoderLayer",
           "SiglipMultiheadAttentionPoolingHead", "BeitLayer", "Data2VecVisionLayer",
           "PartitionAttentionLayer", "SpatialBlock", "ChannelBlock"}
_ATTENTIONS = {"Attention", "EvaAttention", "TalkingHeadAttn", "ClassAttn", "WindowAttention",
               "AttentionDownsample", "ShiftedWindowAttentionV2", "Dinov2Attention",
               "SwinAttention", "XCA", "WindowMultiHeadAttention", "AttentionPoolLatent",
               "MaskUnitAttention", "AttentionCl", "Attention2d", "Attention2dDownsample",
               "MultiScaleAttention", "CLIPAttention", "SiglipAttention", "MultiheadAttention",
               "BeitAttention", "Data2VecVisionAttention", "RelativePositionalMultiHeadAttention",
               "LocallyGroupedAttn", "GlobalSubSampleAttn", "ChannelAttention"}
_MLPS = {"Mlp", "GluMlp", "LevitMlp", "MLP", "Dinov2MLP", "SwinMLP", "NormMlp", "ConvMlpWithNorm",
         "CLIPMLP", "SiglipMLP", "BeitMLP", "Data2VecVisionIntermediate", "MlpWithDepthwiseConv"}
# attentions whose MLPs compute a position bias, a constant in the export (SwinV2-CR's meta MLP)
_BIAS_NETS = {"WindowMultiHeadAttention"}


def family_counts(module) -> Counts:
    """Blocks, attention modules, nn.LayerNorm, MLP modules and two residual Adds per block,
    read off the torch module. One residual: LeViT's downsample blocks and SigLIP's attention
    pools (timm's and Hugging Face's; their MLP's). XCiT's conv LPI residual is not counted
    (neither attention nor MLP).
    EfficientFormerV2's blocks without attention are an MLP and its residual."""
    import torch

    names = Counter(type(m).__name__ for m in module.modules())
    bias_mlps = {id(m) for a in module.modules() if type(a).__name__ in _BIAS_NETS
                 for m in a.modules() if type(m).__name__ in _MLPS}
    mlps = sum(type(m).__name__ in _MLPS and id(m) not in bias_mlps for m in module.modules())
    mlps += names["PartitionAttentionLayer"]  # torchvision MaxViT's: an unnamed nn.Sequential
    former = [m for m in module.modules() if type(m).__name__ == "EfficientFormerV2Block"]
    attended = sum(m.token_mixer is not None for m in former)
    blocks = sum(names[n] for n in _BLOCKS) + attended
    layernorms = sum(isinstance(m, torch.nn.LayerNorm) for m in module.modules())
    pools = names["AttentionPoolLatent"] + names["SiglipMultiheadAttentionPoolingHead"]
    residual = 2 * blocks - names["LevitDownsample"] - pools + len(former) - attended
    return Counts(blocks, sum(names[n] for n in _ATTENTIONS), layernorms, mlps, residual)


def build(family: Family):
    """The seeded, eval-mode module with constant parameters spread (as export.py does)."""
    import timm
    import torch

    from onnxvq.models.export import _spread_constant_parameters

    torch.manual_seed(0)
    if family.source == "timm":
        module = timm.create_model(family.arch, pretrained=False, **dict(family.kwargs)).eval()
    elif family.source == "huggingface":
        module = _huggingface(family)
    elif family.source == "torchvision":
        module = _torchvision(family)
    else:
        raise CorpusError(f"{family.name}: unknown source {family.source!r}")
    _spread_constant_parameters(module)
    return module


def _huggingface(family: Family):
    """A Hugging Face model from its config kind and sizes: a classifier's logits, or a vision
    tower's pooled features (CLIP's class token, SigLIP's attention-pooling head)."""
    import transformers

    from onnxvq.models.export import _Logits

    kinds = {"dinov2": ("Dinov2Config", "Dinov2ForImageClassification"),
             "swin": ("SwinConfig", "SwinForImageClassification"),
             "clip_vision": ("CLIPVisionConfig", "CLIPVisionModel"),
             "siglip_vision": ("SiglipVisionConfig", "SiglipVisionModel"),
             "beit": ("BeitConfig", "BeitForImageClassification"),
             "data2vec_vision": ("Data2VecVisionConfig", "Data2VecVisionForImageClassification")}
    config_cls, model_cls = (getattr(transformers, n) for n in kinds[family.arch])
    tower = family.arch in ("clip_vision", "siglip_vision")
    labels = {} if tower else {"num_labels": 10}
    config = config_cls(image_size=family.image, **labels, **dict(family.kwargs))
    model = model_cls(config)
    return (_Pooled(model) if tower else _Logits(model)).eval()


def _Pooled(model):
    """A Hugging Face vision tower returning its `pooler_output` (a plain tensor to export)."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.model = inner

        def forward(self, x):
            return self.model(pixel_values=x).pooler_output

    return Pooled(model)


def _torchvision(family: Family):
    """torchvision's Swin-v2 or MaxViT at the family's sizes (the builders take no depth
    override)."""
    kw = dict(family.kwargs)
    if family.arch == "maxvit":
        from torchvision.models.maxvit import MaxVit

        return MaxVit(input_size=(family.image, family.image), stochastic_depth_prob=0.0,
                      num_classes=10, **kw).eval()
    from torchvision.models import swin_transformer as st

    return st.SwinTransformer(patch_size=[4, 4], embed_dim=kw["embed_dim"],
                              depths=list(kw["depths"]), num_heads=list(kw["num_heads"]),
                              window_size=list(kw["window_size"]), stochastic_depth_prob=0.0,
                              block=st.SwinTransformerBlockV2,
                              downsample_layer=st.PatchMergingV2, num_classes=10).eval()
