"""Second stage of recognition: group units into blocks; find patch embedding, head, leftovers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.walk import (
    LAYOUT_OPS,
    const_value,
    data_inputs,
    is_linear,
    producer,
    sole_data_consumer,
    weight_of,
)
from onnxvq.recognise.norms import norm_input
from onnxvq.recognise.structure import Block, Linear, Residual, ViTStructure


def assemble_blocks(graph: gs.Graph, s: ViTStructure) -> list[Block]:
    nodes = {n.name: n for n in graph.nodes}
    tensors = graph.tensors()
    res_by_branch = {}
    for r in s.residuals:
        res_by_branch.setdefault(r.kind, []).append(r)
    blocks = []
    for att in s.attentions:
        r_att = _residual_for(att.out_proj, res_by_branch.get("attention", []), nodes, tensors)
        mlp, r_mlp = None, None
        # the MLP reads the attention residual; without one (LeViT's downsampling attention
        # changes the width), the attention's output projection itself
        start = r_att.node if r_att is not None else (
            att.out_proj.bias_add or att.out_proj.node if att.out_proj else None)
        for m in s.mlps if start is not None else ():
            if _reaches(tensors[nodes[m.fc1.node].inputs[0].name], start):
                mlp = m
                r_mlp = _residual_for(m.fc2, res_by_branch.get("mlp", []), nodes, tensors)
                break
        placement, norms = _placement(att, mlp, r_att, r_mlp, nodes, tensors)
        residuals = tuple(r for r in (r_att, r_mlp) if r is not None)
        blocks.append(Block(len(blocks), att, mlp, norms, residuals, placement))
    return blocks


def _residual_for(lin: Linear | None, candidates: list[Residual], nodes,
                  tensors) -> Residual | None:
    if lin is None:
        return None
    end = lin.bias_add or lin.node
    for r in candidates:
        if _reaches(tensors[r.branch], end, through_constant=True):
            return r
    return None


def _reaches(t: gs.Tensor, target: str, through_constant: bool = False) -> bool:
    """Whether walking back from `t` (layout ops, LayerNorm/RMSNorm, constant ops) meets node
    `target`."""
    frontier, seen = [t], set()
    while frontier and len(seen) < 48:
        cur = frontier.pop(0)
        if cur.name in seen:
            continue
        seen.add(cur.name)
        p = producer(cur)
        if p is None:
            continue
        if p.name == target:
            return True
        constant_op = p.op in ("Add", "Mul") and len(data_inputs(p)) == 1
        normed = norm_input(p)  # a LayerNorm or an RMSNorm: its input
        if normed is not None:
            frontier.append(normed)
        elif p.op in LAYOUT_OPS or (through_constant and constant_op):
            frontier.extend(data_inputs(p))
    return False


def _norm_before(t: gs.Tensor) -> gs.Node | None:
    frontier, seen = [t], 0
    while frontier and seen < 24:
        p = producer(frontier.pop(0))
        seen += 1
        if p is None:
            continue
        if norm_input(p) is not None:  # a LayerNorm, or an RMSNorm's last node (AIMv2)
            return p
        if p.op in LAYOUT_OPS:
            frontier.extend(data_inputs(p))
    return None


def _norm_after(t: gs.Tensor) -> gs.Node | None:
    for c in t.outputs:
        if c.op == "LayerNormalization":
            return c
    return None


def _placement(att, mlp, r_att, r_mlp, nodes, tensors) -> tuple[str, tuple[str, ...]]:
    pre_att = _norm_before(nodes[att.projections[0].node].inputs[0])
    pre_mlp = _norm_before(nodes[mlp.fc1.node].inputs[0]) if mlp else None
    post_att = _norm_after(tensors[r_att.node and _out(nodes, r_att.node)]) if r_att else None
    post_mlp = _norm_after(tensors[_out(nodes, r_mlp.node)]) if r_mlp else None
    # A LayerNorm in front of the projections is a pre-norm only if it sits on the branch, i.e. it
    # reads the residual's skip tensor (or the skip is a projection of its output: Hiera's
    # stage-transition blocks add pool(proj(norm(x)))); after a post-norm block the previous
    # norm feeds q too.
    if pre_att is not None and r_att is not None and (
            _reads(norm_input(pre_att), r_att.skip)
            or _projected_shortcut(tensors[r_att.skip], pre_att)):
        norms = tuple(n.name for n in (pre_att, pre_mlp) if n is not None)
        return "pre-norm", norms
    if post_att is not None:
        return "post-norm", tuple(n.name for n in (post_att, post_mlp) if n is not None)
    on_branch = [_norm_before(tensors[r.branch]) for r in (r_att, r_mlp) if r is not None]
    if on_branch and all(n is not None for n in on_branch):
        return "res-post-norm", tuple(n.name for n in on_branch)
    return "none", ()


def _projected_shortcut(skip: gs.Tensor, norm: gs.Node) -> bool:
    """`skip` is a linear of `norm`'s output, then its bias, layout ops and max pooling
    (Hiera's ReduceMax, SAM2 HieraDet's MaxPool)."""
    for _ in range(12):
        p = producer(skip)
        bias = p is not None and p.op == "Add" and len(data_inputs(p)) == 1
        pool = p is not None and p.op in ("ReduceMax", "MaxPool")  # Hiera's; SAM2 HieraDet's
        if p is None or not (is_linear(p) or bias or p.op in LAYOUT_OPS or pool):
            return False
        if is_linear(p):
            return _norm_before(p.inputs[0]) is norm
        if not data_inputs(p):  # a constant (the class token's Expand, positions)
            return False
        skip = data_inputs(p)[0]
    return False


def _reads(t: gs.Tensor, skip: str) -> bool:
    """`t` is the skip tensor, or a Concat of it (CaiT's class attention normalises the class
    token concatenated with the patch tokens; its residual adds to the class token alone)."""
    p = producer(t)
    return t.name == skip or (p is not None and p.op == "Concat"
                              and any(i.name == skip for i in p.inputs))


def _out(nodes, name: str) -> str:
    return nodes[name].outputs[0].name


def patch_embed(graph: gs.Graph, s: ViTStructure) -> list[str]:
    """The Convs with constant weights on the image's own chain: walking from the graph input
    while each tensor has one data consumer (Shape reads do not count), up to the first linear.
    A conv stem (CCT) is a chain; MobileViT's block convolutions come after the stem's output
    branches (SiLU's x·σ(x), residual shortcuts), so they are not patch embeddings."""
    first = s.attentions[0].projections[0].node if s.attentions else None
    names: list[str] = []
    t = graph.inputs[0] if graph.inputs else None
    for _ in range(64):
        users = [c for c in (t.outputs if t is not None else []) if c.op != "Shape"]
        if len(users) != 1 or users[0].name == first or is_linear(users[0]):
            break
        node = users[0]
        if node.op == "Conv" and weight_of(node) is not None:
            names.append(node.name)
        t = node.outputs[0] if node.outputs else None
    return names


def _const_size(t: gs.Tensor) -> int | None:
    if isinstance(t, gs.Constant):
        return int(np.prod(t.shape))
    v = const_value(t)
    return None if v is None else v.size


def linear_info(node: gs.Node) -> Linear:
    w = weight_of(node)
    shape = w.shape  # from the proto's dims: reading `values` would load (and keep) the weight
    transposed = node.op == "Gemm" and node.attrs.get("transB", 0)
    k, n = (shape[1], shape[0]) if transposed else (shape[0], shape[-1])
    out, bias_add = node.outputs[0], None
    nxt = sole_data_consumer(out, "Add")
    if nxt is not None and any(_const_size(i) == n for i in nxt.inputs):
        bias_add, out = nxt.name, nxt.outputs[0]
    return Linear(node.name, w.name, bias_add, out.name, int(k), int(n))


def head_linears(graph: gs.Graph, s: ViTStructure) -> list[Linear]:
    """Linears outside blocks whose result reaches a graph output through layout/bias ops."""
    claimed = _claimed_linears(s)
    outputs = {t.name for t in graph.outputs}
    heads = []
    for n in graph.nodes:
        if is_linear(n) and n.name not in claimed:
            lin = linear_info(n)
            if _leads_to_output(graph.tensors()[lin.output], outputs):
                heads.append(lin)
    return heads


def _leads_to_output(t: gs.Tensor, outputs: set[str]) -> bool:
    for _ in range(8):
        if t.name in outputs:
            return True
        if len(t.outputs) != 1:
            return False
        c = t.outputs[0]
        # bias Adds, and distilled DeiT's (head + head_dist) / 2
        averaging = c.op in ("Add", "Div", "Mul") and (c.op == "Add" or len(data_inputs(c)) == 1)
        if c.op not in LAYOUT_OPS and not averaging:
            return False
        t = c.outputs[0]
    return False


def _claimed_linears(s: ViTStructure) -> set[str]:
    names = set()
    for a in s.attentions:
        names |= {p.node for p in a.projections} | set(a.head_mixing)
        if a.out_proj:
            names.add(a.out_proj.node)
    for m in s.mlps:
        names |= {m.fc1.node, m.fc2.node} | ({m.fc1_x.node} if m.fc1_x else set())
    return names


def unclaimed_ops(graph: gs.Graph, s: ViTStructure) -> Counter:
    claimed = {ln.node for ln in s.layernorms} | {r.node for r in s.residuals}
    claimed |= {n for rms in s.rmsnorms for n in rms.nodes}
    claimed |= set(s.patch_embed) | {h.node for h in s.head}
    for a in s.attentions:
        claimed |= {a.softmax, a.scores_matmul, a.context_matmul, *a.score_nodes, *a.head_mixing}
        for lin in (*a.projections, a.out_proj):
            if lin is not None:
                claimed |= {lin.node, lin.bias_add}
    for m in s.mlps:
        claimed |= {m.fc1.node, m.fc1.bias_add, m.fc2.node, m.fc2.bias_add, *m.activation.nodes,
                    m.gate, m.conv}
        if m.fc1_x is not None:
            claimed |= {m.fc1_x.node, m.fc1_x.bias_add}
    for h in s.head:
        claimed.add(h.bias_add)
    return Counter(n.op for n in graph.nodes if n.name not in claimed and n.op != "Constant")
