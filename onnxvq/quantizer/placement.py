"""Where Q/DQ goes (FQ-ViT's placement, restricted to what runs fast).

Activations are quantized at the inputs of every MatMul/Gemm/Conv with a constant weight and at
both inputs of the two attention MatMuls (Q·Kᵀ and A·V). LayerNorm, Softmax, GELU and the residual
Adds stay float unless PTS/LIS replace them: Q/DQ around them only makes ONNX Runtime run slower
(its int8 kernels are GEMMs) and TensorRT fuses through them anyway.

With `pts`, every LayerNormalization with constant gamma/beta becomes IntLayerNorm (`layernorms`).
With `lis`, every attention Softmax becomes LogIntSoftmax and its A·V product LogIntMatMul
(`softmaxes`): their probs/values sites are dropped, the replacement quantizes them itself, and
the Q·Kᵀ inputs keep `a_bits` (the attention bits then mean the log2 code width, as in FQ-ViT).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch

import onnx_graphsurgeon as gs

from onnxvq.core.config import QuantConfig
from onnxvq.core.walk import weight_of
from onnxvq.recognise.structure import ViTStructure


@dataclass(frozen=True)
class ActivationSite:
    tensor: str
    consumers: tuple[str, ...]  # node names whose input `tensor` is replaced by DQ(Q(tensor))
    role: str  # "linear", "conv", "scores", "probs", "values"
    bits: int


@dataclass(frozen=True)
class WeightSite:
    node: str
    op: str
    weight: str
    axis: int  # output-channel axis of the weight
    bits: int


@dataclass(frozen=True)
class QuantPlan:
    activations: tuple[ActivationSite, ...]
    weights: tuple[WeightSite, ...]
    skipped: tuple[tuple[str, str], ...]  # (node, reason)
    layernorms: tuple[str, ...] = ()  # LayerNormalization nodes replaced by IntLayerNorm (pts)
    softmaxes: tuple[str, ...] = ()  # attention Softmax nodes replaced by LogIntSoftmax (lis)


def plan(graph: gs.Graph, structure: ViTStructure, cfg: QuantConfig) -> QuantPlan:
    acts: dict[str, tuple[list[str], str, int]] = {}
    weights, skipped = [], []
    patch, heads = set(structure.patch_embed), {h.node for h in structure.head}

    def want(node: gs.Node) -> str | None:
        if any(fnmatch(node.name, p) for p in cfg.skip):
            return "matches --skip"
        if node.name in patch and not cfg.quantize_patch_embed:
            return "patch embedding kept float"
        if node.name in heads and not cfg.quantize_head:
            return "head kept float"
        return None

    def add(tensor: gs.Tensor, node: gs.Node, role: str, bits: int) -> None:
        entry = acts.setdefault(tensor.name, ([], role, bits))
        entry[0].append(node.name)

    for node in graph.nodes:
        w = weight_of(node)
        if w is None or not isinstance(node.inputs[1], gs.Constant):
            continue
        reason = want(node) or _refuse_weighted(node)
        if reason:
            skipped.append((node.name, reason))
            continue
        add(node.inputs[0], node, "conv" if node.op == "Conv" else "linear", cfg.a_bits)
        weights.append(WeightSite(node.name, node.op, w.name, _out_axis(node), cfg.w_bits))
    nodes = {n.name: n for n in graph.nodes}
    norms = _layernorm_sites(nodes, structure, want, skipped) if cfg.pts else ()
    softmaxes = _softmax_sites(nodes, structure, want, skipped) if cfg.lis else ()
    if cfg.quantize_attention:
        qk_bits = cfg.a_bits if cfg.lis else cfg.attention_bits
        for att in structure.attentions:
            pairs = [(att.scores_matmul, ("scores", "scores"), qk_bits)]
            if att.softmax not in softmaxes:
                pairs.append((att.context_matmul, ("probs", "values"), cfg.attention_bits))
            for mm, roles, bits in pairs:
                node = nodes[mm]
                if want(node):
                    skipped.append((mm, want(node)))
                    continue
                for t, role in zip(node.inputs[:2], roles, strict=True):
                    add(t, node, role, bits)
    sites = tuple(ActivationSite(t, tuple(c), role, bits) for t, (c, role, bits) in acts.items())
    return QuantPlan(sites, tuple(weights), tuple(skipped), norms, softmaxes)


def _layernorm_sites(nodes, structure: ViTStructure, want, skipped: list) -> tuple[str, ...]:
    chosen = []
    for ln in structure.layernorms:
        node = nodes[ln.node]
        reason = want(node) or refuse_layernorm(node)
        if reason:
            skipped.append((ln.node, reason))
        else:
            chosen.append(ln.node)
    return tuple(chosen)


def _softmax_sites(nodes, structure: ViTStructure, want, skipped: list) -> tuple[str, ...]:
    chosen = []
    for att in structure.attentions:
        reason = (want(nodes[att.softmax]) or want(nodes[att.context_matmul])
                  or refuse_softmax(nodes[att.softmax], nodes[att.context_matmul]))
        if reason:
            skipped.append((att.softmax, reason))
        else:
            chosen.append(att.softmax)
    return tuple(chosen)


def refuse_layernorm(node: gs.Node) -> str | None:
    """Why a LayerNormalization cannot become IntLayerNorm (None: it can)."""
    rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
    axis = node.attrs.get("axis", -1)
    if axis != -1 and (rank is None or axis != rank - 1):
        return "LayerNorm not over the last axis"
    if len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
        return "LayerNorm gamma is not constant"
    if len(node.inputs) > 2 and not isinstance(node.inputs[2], gs.Constant):
        return "LayerNorm beta is not constant"
    return None


def refuse_softmax(softmax: gs.Node, context: gs.Node) -> str | None:
    """Why an attention Softmax cannot become LogIntSoftmax (None: it can)."""
    rank = len(softmax.inputs[0].shape) if softmax.inputs[0].shape is not None else None
    axis = softmax.attrs.get("axis", -1)
    if axis != -1 and (rank is None or axis != rank - 1):
        return "Softmax not over the last axis"
    a, v = context.inputs[0].shape, context.inputs[1].shape
    if a is None or v is None or len(a) != len(v) or len(a) < 2:
        return "A·V operands need the same known rank (LogIntMatMul does not broadcast)"
    return None


def _refuse_weighted(node: gs.Node) -> str | None:
    if node.op == "Gemm":
        if node.attrs.get("transA", 0):
            return "Gemm with transA"
        if node.attrs.get("alpha", 1.0) != 1.0 or node.attrs.get("beta", 1.0) != 1.0:
            return "Gemm with alpha/beta != 1"
    if node.op == "Conv" and node.attrs.get("group", 1) != 1:
        return "grouped/depthwise Conv kept float (per-channel int8 gains little there)"
    if node.op == "MatMul" and len(node.inputs[1].shape) != 2:
        return "MatMul weight is not 2-D"
    return None


def _out_axis(node: gs.Node) -> int:
    if node.op == "Gemm":
        return 0 if node.attrs.get("transB", 0) else 1
    if node.op == "Conv":
        return 0
    return len(node.inputs[1].shape) - 1
