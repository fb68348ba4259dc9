"""Where Q/DQ goes (FQ-ViT's placement, restricted to what runs fast).

Activations are quantized at the inputs of every MatMul/Gemm/Conv with a constant weight and at both
inputs of the two attention MatMuls (Q·Kᵀ and A·V). LayerNorm, Softmax, GELU and the residual Adds stay
float unless PTS/LIS replace them: Q/DQ around them only makes ONNX Runtime run slower (its int8
kernels are GEMMs) and TensorRT fuses through them anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch

import onnx_graphsurgeon as gs

from onnxvq.config import QuantConfig
from onnxvq.gsutil import weight_of
from onnxvq.structure import ViTStructure


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
    if cfg.quantize_attention:
        nodes = {n.name: n for n in graph.nodes}
        for att in structure.attentions:
            for mm, roles in ((att.scores_matmul, ("scores", "scores")),
                              (att.context_matmul, ("probs", "values"))):
                node = nodes[mm]
                if want(node):
                    skipped.append((mm, want(node)))
                    continue
                for t, role in zip(node.inputs[:2], roles, strict=True):
                    add(t, node, role, cfg.attention_bits)
    sites = tuple(ActivationSite(t, tuple(c), role, bits) for t, (c, role, bits) in acts.items())
    return QuantPlan(sites, tuple(weights), tuple(skipped))


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
