"""Where Q/DQ goes (FQ-ViT's placement, restricted to what runs fast).

Activations are quantized at the inputs of every MatMul/Gemm/Conv with a constant weight, at
both inputs of the two attention MatMuls (Q·Kᵀ and A·V) and of a gated MLP's act(x₁)·x₂
product. LayerNorm, Softmax, GELU and the residual Adds stay float unless PTS/LIS replace them:
Q/DQ around them only makes ONNX Runtime run slower (its int8 kernels are GEMMs) and TensorRT
fuses through them anyway.

With `pts`, every LayerNormalization with constant gamma/beta becomes IntLayerNorm (`layernorms`).
With `lis`, every attention Softmax becomes LogIntSoftmax and its A·V product LogIntMatMul
(`softmaxes`): their probs/values sites are dropped, the replacement quantizes them itself, and
the Q·Kᵀ inputs keep `a_bits` (the attention bits then mean the log2 code width, as in FQ-ViT).

What a pass cannot rewrite is the pass's to say: placement asks each pass's `refuse` and records
the reason in `QuantPlan.skipped`. The plan records themselves are in `onnxvq.core.params`.
"""

from __future__ import annotations

from fnmatch import fnmatch

import onnx_graphsurgeon as gs

from onnxvq.core.config import QuantConfig
from onnxvq.core.params import ActivationSite, QuantPlan, WeightSite
from onnxvq.core.walk import weight_of
from onnxvq.passes import quantize_weights, replace_layernorm, replace_softmax
from onnxvq.quantizer.conv import cnn_sites, sharing
from onnxvq.recognise.structure import ViTStructure


def plan(graph: gs.Graph, structure: ViTStructure, cfg: QuantConfig) -> QuantPlan:
    acts: dict[str, tuple[list[str], str, int]] = {}
    weights, skipped = [], []
    want = _wanted(structure, cfg)

    def add(tensor: gs.Tensor, node: gs.Node, role: str, bits: int) -> None:
        entry = acts.setdefault(tensor.name, ([], role, bits))
        if bits > entry[2]:  # a shared input takes the widest of its consumers' bits
            entry = acts[tensor.name] = (entry[0], entry[1], bits)
        if node.name not in entry[0]:
            entry[0].append(node.name)

    for node in graph.nodes:
        w = weight_of(node)
        if w is None or not isinstance(node.inputs[1], gs.Constant):
            continue
        reason = want(node) or quantize_weights.refuse(node)
        if reason:
            skipped.append((node.name, reason))
            continue
        w_bits, a_bits = _edge_bits(node, structure, cfg)
        add(node.inputs[0], node, "conv" if node.op == "Conv" else "linear", a_bits)
        weights.append(WeightSite(node.name, node.op, w.name, _out_axis(node), w_bits))
    nodes = {n.name: n for n in graph.nodes}
    norms = _layernorm_sites(nodes, structure, want, skipped) if cfg.pts else ()
    softmaxes = _softmax_sites(nodes, structure, want, skipped) if cfg.lis else ()
    products = (*_attention_matmuls(structure, cfg, softmaxes), *_gate_products(structure, cfg))
    for mm, roles, bits in products:
        if reason := want(nodes[mm]):
            skipped.append((mm, reason))
            continue
        for t, role in zip(nodes[mm].inputs[:2], roles, strict=True):
            add(t, nodes[mm], role, bits)
    if structure.is_cnn:  # int8 Conv/Add/pool chains for ORT (quantizer/conv.py)
        for t, node, role in cnn_sites(graph, {w.node for w in weights}):
            if node.name not in norms:  # IntLayerNorm (--pts) takes its float input itself
                add(t, node, role, cfg.a_bits)
    sites = tuple(ActivationSite(t, tuple(c), role, bits) for t, (c, role, bits) in acts.items())
    shared = sharing(graph, set(acts)) if structure.is_cnn else ()
    return QuantPlan(sites, tuple(weights), tuple(skipped), norms, softmaxes, shared)


def _wanted(structure: ViTStructure, cfg: QuantConfig):
    """The user's reasons to keep a node float (None: quantize it)."""
    patch, heads = set(structure.patch_embed), {h.node for h in structure.head}

    def want(node: gs.Node) -> str | None:
        if any(fnmatch(node.name, p) for p in cfg.skip):
            return "matches --skip"
        if node.name in patch and not cfg.quantize_patch_embed:
            return "patch embedding kept float"
        if node.name in heads and not cfg.quantize_head:
            return "head kept float"
        if cfg.weight_only and node.op == "Conv":
            return "weight-only: Linear weights only"
        return None

    return want


def _attention_matmuls(structure: ViTStructure, cfg: QuantConfig, softmaxes: tuple[str, ...]):
    """(MatMul, input roles, bits) of Q·Kᵀ and, unless LIS replaces it, A·V per attention."""
    if not cfg.quantize_attention or cfg.weight_only:
        return
    log_codes = cfg.lis or cfg.lis_qdq  # attention bits: the log code width, as in FQ-ViT
    qk_bits = cfg.a_bits if log_codes else cfg.attention_bits
    for att in structure.attentions:
        yield att.scores_matmul, ("scores", "scores"), _layer_bits(att.scores_matmul, cfg,
                                                                   qk_bits)
        if att.softmax not in softmaxes:  # --lis-qdq: V at a_bits as LogIntMatMul's (the probs
            av_bits = cfg.a_bits if cfg.lis_qdq else cfg.attention_bits  # site: log codes)
            yield att.context_matmul, ("probs", "values"), _layer_bits(
                att.context_matmul, cfg, av_bits)


def _gate_products(structure: ViTStructure, cfg: QuantConfig):
    """(Mul, input roles, bits) of each gated MLP's act(x₁)·x₂ (SwiGLU): both operands at
    `a_bits`, so ORT runs it as QLinearMul and TensorRT as an int8 elementwise product."""
    if cfg.weight_only:
        return
    for m in structure.mlps:
        if m.gate is not None:
            yield m.gate, ("gate", "gate"), _layer_bits(m.gate, cfg, cfg.a_bits)


def _layer_bits(node: str, cfg: QuantConfig, default: int) -> int:
    """`layer_bits` (mixed precision) for an attention MatMul's inputs, else `default`."""
    return next((b for pattern, b in cfg.layer_bits if fnmatch(node, pattern)), default)


def _edge_bits(node: gs.Node, structure: ViTStructure, cfg: QuantConfig) -> tuple[int, int]:
    """(weight, input) bits; `layer_bits` (mixed precision) first, then `edge_bits` for the
    patch embedding and the head (h4)."""
    for pattern, bits in cfg.layer_bits:
        if fnmatch(node.name, pattern):
            return bits, bits
    edges = {*structure.patch_embed, *(h.node for h in structure.head)}
    if cfg.edge_bits is not None and node.name in edges:
        return cfg.edge_bits, cfg.edge_bits
    return cfg.w_bits, cfg.a_bits


def _layernorm_sites(nodes, structure: ViTStructure, want, skipped: list) -> tuple[str, ...]:
    chosen = []
    for ln in structure.layernorms:
        node = nodes[ln.node]
        reason = want(node) or replace_layernorm.refuse(node)
        if reason:
            skipped.append((ln.node, reason))
        else:
            chosen.append(ln.node)
    return tuple(chosen)


def _softmax_sites(nodes, structure: ViTStructure, want, skipped: list) -> tuple[str, ...]:
    chosen = []
    for att in structure.attentions:
        reason = (want(nodes[att.softmax]) or want(nodes[att.context_matmul])
                  or replace_softmax.refuse(nodes[att.softmax], nodes[att.context_matmul]))
        if reason:
            skipped.append((att.softmax, reason))
        else:
            chosen.append(att.softmax)
    return tuple(chosen)


def _out_axis(node: gs.Node) -> int:
    if node.op == "Gemm":
        return 0 if node.attrs.get("transB", 0) else 1
    if node.op == "Conv":
        return 0
    return len(node.inputs[1].shape) - 1
