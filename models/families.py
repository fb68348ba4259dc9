"""The grown export corpus: the families users bring, at their smallest configs (random weights).

    python -m onnxvq.models.families --all        # export every family (cached in .corpus)

Each entry is one timm / torchvision / Hugging Face model with fewer blocks where the library
takes a depth override, exported once (TorchScript opset 17, or dynamo where named), checked
against torch, and cached beside the main corpus (`corpus.corpus_dir()`). `counts` are the
torch modules' own numbers (`family_modules.family_counts`, checked by
tests/models/test_families.py) and what `onnxvq inspect` must find; `unsupported` says why
recognition does not cover a family yet (its quantization with --pts/--lis is then refused by
name instead of written silently as W8/A8); where it covers part of it, `found` is what inspect
finds (--lis then warns about the Softmaxes it leaves float).
Special exports: `external` writes the weights as external data, `dynamic_hw` keeps height and
width symbolic. Tags: "ci" (CI's representative subset), "big" (no depth override: 24 M
parameters, its torch-count check is a slow test).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from onnxvq.models.corpus import CorpusError, corpus_dir
from onnxvq.models.family_modules import Counts, build

log = logging.getLogger("onnxvq.models.families")


@dataclass(frozen=True)
class Family:
    name: str
    source: str  # "timm", "torchvision" or "huggingface"
    arch: str  # timm model name, torchvision builder, or HF config kind
    image: int
    counts: Counts
    kwargs: tuple[tuple[str, object], ...] = ()
    exporter: str = "torchscript17"  # or "dynamo"
    heads: int = 1  # classifier heads (distilled models have two)
    external: bool = False
    dynamic_hw: bool = False
    patch_convs: int = 1  # Convs of the patch embedding (LeViT's stem is a chain of four)
    unsupported: str | None = None  # why recognition misses it (counts are torch's)
    # what `inspect` finds where recognition covers part of the family (`unsupported` says
    # what it misses); those families quantize through the gate as the supported ones do
    found: Counts | None = None
    tags: tuple[str, ...] = field(default=())

    @property
    def path(self) -> Path:
        return corpus_dir() / f"family_{self.name}.{self.exporter}.onnx"


def _vit(depth: int, ln: int | None = None) -> Counts:
    return Counts(depth, depth, ln if ln is not None else 2 * depth + 1, depth, 2 * depth)


_HF_SMALL = (("hidden_size", 192), ("num_hidden_layers", 2), ("num_attention_heads", 3),
             ("intermediate_size", 768), ("patch_size", 16))
_SWIN_SMALL = (("embed_dim", 48), ("depths", (1, 1, 2, 1)), ("num_heads", (3, 6, 12, 24)))

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("deit_tiny_distilled", "timm", "deit_tiny_distilled_patch16_224", 224, _vit(2),
           (("depth", 2),), heads=2, tags=("ci",)),
    Family("deit_tiny_distilled_dynamo", "timm", "deit_tiny_distilled_patch16_224", 224,
           _vit(2), (("depth", 2),), exporter="dynamo", heads=2),
    Family("deit3_small", "timm", "deit3_small_patch16_224", 224, _vit(2), (("depth", 2),)),
    Family("beit_tiny", "timm", "beit_base_patch16_224", 224, _vit(2),
           (("embed_dim", 192), ("depth", 2), ("num_heads", 3))),
    Family("dinov2_reg4", "timm", "vit_small_patch14_reg4_dinov2", 518, _vit(2),
           (("depth", 2),), heads=0, tags=("ci",)),
    Family("mobilevit_xxs", "timm", "mobilevit_xxs", 256, Counts(9, 9, 21, 9, 18), tags=("ci",)),
    Family("pit_ti", "timm", "pit_ti_224", 224, Counts(12, 12, 25, 12, 24)),
    Family("deit_tiny_external", "timm", "deit_tiny_patch16_224", 224, _vit(2),
           (("depth", 2),), external=True),
    Family("deit_tiny_dynamic_hw", "timm", "deit_tiny_patch16_224", 224, _vit(2),
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
    Family("eva02_tiny", "timm", "eva02_tiny_patch14_224", 224, _vit(2), (("depth", 2),),
           exporter="dynamo",  # TorchScript fails on timm's `is_causal` tensor
           heads=0),  # rotary q/k, SwiGLU MLP; no classifier (the fc_norm'd pooled features)
    Family("tv_swin_v2_t", "torchvision", "swin_v2", 256, Counts(5, 5, 15, 5, 10),
           _SWIN_SMALL + (("window_size", (8, 8)),)),
    Family("hf_dinov2", "huggingface", "dinov2", 224, _vit(2),
           (("hidden_size", 192), ("num_hidden_layers", 2), ("num_attention_heads", 3),
            ("intermediate_size", 768), ("patch_size", 14)), tags=("ci",)),
    Family("hf_swin", "huggingface", "swin", 224, Counts(5, 5, 15, 5, 10),
           _SWIN_SMALL + (("window_size", 7),)),
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
           _SWIN_SMALL),  # cosine attention, res-post-norm, stage norms
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
    Family("hf_clip_vision", "huggingface", "clip_vision", 224, Counts(2, 2, 6, 2, 4),
           _HF_SMALL, heads=0),  # QuickGELU MLPs; the pooled, post-LayerNorm'd class token
    Family("hf_siglip_vision", "huggingface", "siglip_vision", 224, Counts(3, 3, 6, 3, 5),
           _HF_SMALL, heads=0),  # tanh GELU; the pooling head is a torch nn.MultiheadAttention
    Family("hf_beit", "huggingface", "beit", 224, Counts(2, 2, 5, 2, 4),
           _HF_SMALL + (("use_relative_position_bias", True),)),
    Family("hf_data2vec_vision", "huggingface", "data2vec_vision", 224, Counts(2, 2, 5, 2, 4),
           _HF_SMALL + (("use_relative_position_bias", True),)),
    Family("tv_maxvit", "torchvision", "maxvit", 224, Counts(8, 8, 17, 8, 16),
           (("stem_channels", 32), ("partition_size", 7), ("block_channels", [32, 64, 128, 256]),
            ("block_layers", [1, 1, 1, 1]), ("head_dim", 16))),  # block + grid attention
    Family("mvitv2_tiny", "timm", "mvitv2_tiny", 224, Counts(10, 10, 51, 10, 20), tags=("big",),
           unsupported="pooling attention: q, k and v are each pooled by a strided depthwise "
           "Conv and LayerNorm'd before Q·Kᵀ, and the decomposed relative positions are Einsum "
           "products scattered into the scores; the attention matcher traces q, k and v to a "
           "projection through elementwise and layout ops only (no Conv)"),
    # --- session 6: more timm, Hugging Face and torchvision families ---
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
    Family("beitv2_tiny", "timm", "beitv2_base_patch16_224", 224, _vit(2),
           (("embed_dim", 192), ("depth", 2), ("num_heads", 3), ("init_values", 0.1))),
    # four register tokens, global average pooling, layer-scale
    Family("vit_reg4_gap", "timm", "vit_medium_patch16_reg4_gap_256", 256, _vit(2),
           (("depth", 2),)),
    Family("flexivit_small", "timm", "flexivit_small", 240, _vit(2), (("depth", 2),)),
    # windowed and global attention with decomposed relative positions (Einsum), a conv neck
    Family("samvit_tiny", "timm", "samvit_base_patch16_224", 224, _vit(2),
           (("embed_dim", 192), ("depth", 2), ("num_heads", 3), ("global_attn_indexes", (1,)))),
    # MBConv stages, then ViT blocks with GeGLU MLPs
    Family("vitamin_small", "timm", "vitamin_small_224", 224, Counts(14, 14, 51, 14, 28),
           tags=("big",)),
    # two branches (patch 12 and 16): self-attention blocks, then cross attention (a branch's
    # class token queries the other branch's tokens; one residual, no MLP)
    Family("crossvit_tiny", "timm", "crossvit_tiny_240", 240, Counts(4, 4, 12, 2, 6),
           (("depth", ((1, 1, 0),)),), heads=0, patch_convs=0),
    Family("hf_swinv2", "huggingface", "swinv2", 256, Counts(5, 5, 15, 5, 10),
           _SWIN_SMALL + (("window_size", 8),)),  # cosine attention, res-post-norm
    Family("hf_deit_distilled", "huggingface", "deit_distilled", 224, _vit(2), _HF_SMALL,
           heads=2),  # the class and distillation heads (their mean is the logits)
    # mask_ratio 0: the export keeps the per-image random shuffle of the patch tokens
    # (RandomUniformLike -> TopK -> GatherElements); the class token, returned, does not depend on
    # their order, the other rows do
    Family("hf_vit_mae", "huggingface", "vit_mae", 224, _vit(2),
           _HF_SMALL + (("mask_ratio", 0.0),), heads=0),
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
    Family("hf_dinov2_reg4", "huggingface", "dinov2_registers", 224, _vit(2),
           _HF_SMALL[:4] + (("patch_size", 14), ("num_register_tokens", 4)), exporter="dynamo"),
    # EVA (the first; no rotary, plain MLP), average pooling; dynamo (TorchScript fails on timm's
    # `is_causal` tensor, as for EVA-02)
    Family("eva_tiny", "timm", "eva_giant_patch14_224", 224, _vit(2),
           (("embed_dim", 192), ("depth", 2), ("num_heads", 3), ("mlp_ratio", 4.0)),
           exporter="dynamo"),
    # torchvision's Swin v1 (the v2 block above) and ViT at vit_h_14's patch 14 (vit_l_16 and
    # vit_h_14 are the vit_b_16 class at other sizes: the same graph, deeper and wider)
    Family("tv_swin_t", "torchvision", "swin", 224, Counts(5, 5, 15, 5, 10),
           _SWIN_SMALL + (("window_size", (7, 7)),)),
    Family("tv_vit_h14", "torchvision", "vit", 224, _vit(2),
           (("patch_size", 14), ("num_layers", 2), ("num_heads", 4), ("hidden_dim", 128),
            ("mlp_dim", 512))),
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
)}

def ensure(family: Family, *, force: bool = False) -> Path:
    """The family's exported model, exporting it when missing."""
    manifest = family.path.with_suffix(".json")
    if not force and family.path.exists() and manifest.exists():
        return family.path
    export(family)
    return family.path


def export(family: Family) -> dict:
    import numpy as np
    import onnx
    import torch

    from onnxvq.core.graph import save_model
    from onnxvq.core.runtime import make_session
    module = build(family)
    example = torch.randn(2, 3, family.image, family.image, generator=torch.Generator()
                          .manual_seed(1))
    family.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = family.path.with_name(f".{family.path.name}.export.onnx")
    start = time.perf_counter()
    axes = {0: "batch", 2: "height", 3: "width"} if family.dynamic_hw else {0: "batch"}
    try:
        if family.exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=1024)
            torch.onnx.export(module, (example,), str(tmp), dynamo=True, external_data=False,
                              dynamic_shapes=({0: batch},), input_names=["input"],
                              output_names=["logits"])
        else:
            torch.onnx.export(module, (example,), str(tmp), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": axes, "logits": {0: "batch"}})
        model = onnx.load(str(tmp))
    except Exception as exc:  # the exporters raise anything from RuntimeError to their own types
        raise CorpusError(f"{family.name} did not export: {type(exc).__name__}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    x = torch.randn(3, 3, family.image, family.image, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = module(x).numpy()
    got = make_session(model).run(None, {model.graph.input[0].name: x.numpy()})[0]
    diff = float(np.abs(got - want).max())
    if not diff <= 1e-4:
        raise CorpusError(f"{family.name}: ORT differs from torch by {diff:.3g}")
    save_model(model, family.path, external_data=family.external)
    record = {"name": family.name, "exporter": family.exporter, "export_seconds": round(seconds, 2),
              "max_abs_diff": diff, "external_data": family.external}
    family.path.with_suffix(".json").write_text(json.dumps(record, indent=1))
    log.info("%s: exported in %.1f s, max |ORT - torch| %.1e", family.name, seconds, diff)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m onnxvq.models.families", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(FAMILIES))
    parser.add_argument("--all", action="store_true")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)
    failures = 0
    for name in FAMILIES if args.all else args.names:
        try:
            ensure(FAMILIES[name], force=args.force)
        except (CorpusError, KeyError) as exc:
            failures += 1
            log.error("%s: %s", name, exc)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
