"""The common matching of the fused-attention passes: packed QKV codes in, merged codes out.

`find_attention(graph, anchor, probs_path)` walks from the softmax node `anchor` to the scores
MatMul(DQ(q), DQ(kᵀ)), from q, k and v back to one packed uint8 tensor X [B, N, 3, H, D] through
Gather(Transpose(X, [2,0,3,1,4]), i) (what hoist-quantize-over-split leaves; MaxViT's perm and
axis too) or X [B, N, H, 3·D] through Transposes of Split(X, axis 3) (TinyViT), and from the
attention product forward through the head merge (Transpose [0,2,1,3], Reshape [B, N, H·D]) to
one per-tensor uint8 QuantizeLinear. `probs_path` is the mode's own part (scores to P·V) and
returns a `Probs`, or a refusal reason; so does `find_attention`. With `allow_bias`, constant
additive biases between the scores MatMul and the Softmax are walked over (attention_bias.py)
into one float32 [W, 1|H, N, N] (`AttentionUnit.bias`); a bias that is not a constant is refused.
`AttentionUnit.bias_exact` says whether scores + that sum rounds as the unfused chain of Adds
does (at most one term nonzero at each entry), which LogIntAttention's exactness needs.
Three separate projections, each quantized after its head split, are packed into X when the
attention fuses (attention_separate.py); the head merge is attention_merge.py's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.walk import LAYOUT_OPS, const_value, producer
from onnxvq.passes.attention_bias import bias_chain, combined_bias, one_term_per_entry
from onnxvq.passes.attention_merge import merged_output, scale_zp
from onnxvq.passes.attention_separate import SeparateCodes, separate_codes
from onnxvq.passes.ort_domain import rewire
from onnxvq.plugins.reference.attention import MAX_HEAD_DIM, MAX_TOKENS


@dataclass
class Probs:
    """The mode-specific middle: the scores tensor, V's codes and scale, the product's output."""

    scores: gs.Tensor
    v_codes: gs.Tensor
    v_scale: float
    product: gs.Tensor
    nodes: dict = field(default_factory=dict)


@dataclass
class AttentionUnit:
    anchor: gs.Node
    x: gs.Tensor  # the packed uint8 codes
    common: dict  # attributes every fused attention op has
    v_scale: float
    out_q: gs.Node
    probs: Probs
    bias: np.ndarray | None = None  # float32 [W, 1|H, N, N] added to the scaled scores
    view: gs.Tensor | None = None  # the merge's own target when it is not [B, N, H·D]
    separate: SeparateCodes | None = None  # packs three projections' codes into `x`
    bias_exact: bool = True  # x + bias rounds as the unfused Adds (one term per entry)

    def replace_output(self, graph: gs.Graph, y: gs.Tensor) -> None:
        if self.separate is not None:  # the packed codes the fused node reads, built now
            self.separate.emit(graph)
        if self.view is not None:  # MaxViT's [B, 7, 7, H·D]: the same codes, reshaped
            y.shape = None  # the fused node's own is [B, N, H·D]
            out = gs.Variable(f"{y.name}/view", dtype=np.uint8, shape=self.out_q.outputs[0].shape)
            graph.nodes.append(gs.Node("Reshape", name=f"{y.name}/Reshape",
                                       inputs=[y, self.view], outputs=[out]))
            y = out
        rewire(self.out_q.outputs[0], y, graph)
        self.out_q.outputs.clear()


def _gathered(t: gs.Tensor, graph: gs.Graph) -> tuple[gs.Tensor, int] | None:
    """(X, piece i) when t is piece i of Transpose(X, perm) along its axis a of X's size 3, the
    other axes in [B, H, N, D] order (perm [2,0,3,1,4] with a = 0 in timm's ViT / Swin / BEiT,
    [0,3,2,1,4] with a = 2 in MaxViT), read once: Gather(·, i) (timm's qkv[i]) or
    Squeeze(Split(·)[i], a) (its TorchScript unbind)."""
    g = producer(t)
    if g is None or len(t.outputs) != 1:
        return None
    if g.op == "Squeeze":
        axes = const_value(g.inputs[1]) if len(g.inputs) > 1 else g.attrs.get("axes")
        sp = producer(g.inputs[0])
        axis = sp.attrs.get("axis", 0) if sp is not None and sp.op == "Split" else None
        if axes is None or [int(a) for a in np.ravel(axes)] != [axis] or len(sp.outputs) != 3 \
                or len(g.inputs[0].outputs) != 1:
            return None
        src, index = sp.inputs[0], sp.outputs.index(g.inputs[0])
    elif g.op == "Gather":
        idx, axis = const_value(g.inputs[1]), g.attrs.get("axis", 0)
        if idx is None or idx.ndim != 0 or len(g.inputs[0].outputs) != 3:
            return None
        src, index = g.inputs[0], int(idx) % 3
    else:
        return None
    tr = producer(src)
    perm = list(tr.attrs.get("perm", [])) if tr is not None and tr.op == "Transpose" else []
    if len(perm) != 5 or perm[axis] != 2 or [p for i, p in enumerate(perm) if i != axis] != \
            [0, 3, 1, 4]:
        return None
    return tr.inputs[0], index


# X [B, N, H, 3·D] (q, k, v packed per head: TinyViT's view(B, N, H, -1).split(D, 3)): the
# Transposes that make each piece [B, H, N, D] (k directly [B, H, D, N])
_PER_HEAD = {"q": [0, 2, 1, 3], "k": [0, 2, 3, 1], "v": [0, 2, 1, 3]}


def _piece(t: gs.Tensor, graph: gs.Graph, role: str) -> tuple[gs.Tensor, int, int] | None:
    """(X, piece index, qkv_layout) of q / kᵀ / v (`role`): layout 0 the packed [B, N, 3, H, D]
    (kᵀ a Transpose [0,1,3,2] of the piece), layout 1 the per-head [B, N, H, 3·D]."""
    tr = producer(t)
    perm = list(tr.attrs.get("perm", [])) if tr is not None and tr.op == "Transpose" else None
    if len(t.outputs) != 1:
        return None
    if role == "k" and perm == [0, 1, 3, 2] and len(tr.inputs[0].outputs) == 1:
        g = _gathered(tr.inputs[0], graph)
        if g is not None:
            return (*g, 0)
    if role != "k" and (g := _gathered(t, graph)) is not None:
        return (*g, 0)
    if perm != _PER_HEAD[role] or len(tr.inputs[0].outputs) != 1:
        return None
    sp = producer(tr.inputs[0])
    if sp is None or sp.op != "Split" or sp.attrs.get("axis", 0) not in (3, -1) or \
            len(sp.outputs) != 3:
        return None
    sizes = const_value(sp.inputs[1]) if len(sp.inputs) > 1 else None
    if sizes is not None and len(set(np.ravel(sizes).tolist())) != 1:
        return None  # LeViT: v wider than q and k
    return sp.inputs[0], sp.outputs.index(tr.inputs[0]), 1


def _codes_of(dq: gs.Node | None, graph: gs.Graph, role: str):
    """(X, index, layout, scale, zero point) of q's / kᵀ's DequantizeLinear, or None."""
    if dq is None or dq.op != "DequantizeLinear" or len(dq.outputs[0].outputs) != 1:
        return None
    g, p = _piece(dq.inputs[0], graph, role), scale_zp(dq)
    return None if g is None or p is None else (*g, *p)


def find_attention(graph: gs.Graph, anchor: gs.Node, probs_path,
                   allow_bias: bool = False) -> AttentionUnit | str:
    probs = probs_path(graph, anchor)
    if isinstance(probs, str):
        return probs
    walked = bias_chain(graph, probs.scores) if allow_bias else (probs.scores, [])
    if isinstance(walked, str):
        return walked
    scores, terms = walked
    mm = producer(scores)
    if mm is None or mm.op != "MatMul" or len(scores.outputs) != 1 or scores in graph.outputs:
        return "scores are not a plain MatMul (mask, attention bias or relative positions)" \
            if not allow_bias else "scores are not a MatMul plus constant biases"
    q = _codes_of(producer(mm.inputs[0]), graph, "q")
    k = _codes_of(producer(mm.inputs[1]), graph, "k")
    separate = None if q or k else _separate(graph, mm, probs)
    if separate is not None:
        q, k, v, separate = separate
    if q is None or k is None:
        return _codes_refusal(mm, q is None, k is None)
    if separate is None:
        v = _piece(probs.v_codes, graph, "v")
    if v is None or not (q[0] is k[0] is v[0]) or (q[1], k[1], v[1]) != (0, 1, 2) or \
            not q[2] == k[2] == v[2]:
        return "q, k, v are not pieces 0, 1, 2 of one packed code tensor"
    x, layout = q[0], q[2]
    dims = _qkv_dims(x, layout)
    if x.dtype != np.uint8 or dims is None:
        return "packed codes are not uint8 [B, N, 3, H, D] with static N, H, D" if not layout \
            else "packed codes are not uint8 [B, N, H, 3·D] with static N, H, D"
    n, heads, dim = dims
    if dim > MAX_HEAD_DIM:
        return f"head dim {dim} above {MAX_HEAD_DIM}"
    if n > MAX_TOKENS:
        return f"{n} tokens above {MAX_TOKENS}"
    bias = combined_bias(terms, n, heads) if terms else None
    if isinstance(bias, str):
        return bias
    exact = len(terms) < 2 or one_term_per_entry(terms, n, heads)
    merged = merged_output(graph, probs.product, n, heads * dim)
    if isinstance(merged, str):
        return merged
    out_q, view = merged
    s_o, z_o = scale_zp(out_q)
    common = dict(num_heads=heads, q_zero_point=q[4], k_zero_point=k[4], v_zero_point=v_zp(probs),
                  qk_scale=float(np.float32(q[3]) * np.float32(k[3])), out_scale=float(s_o),
                  out_zero_point=z_o)
    if layout:
        common["qkv_layout"] = layout
    return AttentionUnit(anchor, x, common, probs.v_scale, out_q, probs, bias, view, separate,
                         exact)


def _codes_refusal(mm: gs.Node, q_bad: bool, k_bad: bool) -> str:
    """Why q / kᵀ are not the packed codes, with the spelling of each failing operand (the ops
    from the scores MatMul up to the first one that is not a layout op), so a new exporter's
    spelling is named in the reason."""
    who = "q and kᵀ are not dequantized pieces" if q_bad and k_bad else \
        f"{'q' if q_bad else 'kᵀ'} is not a dequantized piece"
    bad = [(r, t) for r, t, b in (("q", mm.inputs[0], q_bad), ("kᵀ", mm.inputs[1], k_bad)) if b]
    said = "; ".join(f"{r} = {spelling(t)}" for r, t in bad)
    return f"{who} of hoisted packed QKV codes ({said})"


def spelling(t: gs.Tensor, depth: int = 7) -> str:
    """The ops producing `t` as nested calls, through layout ops and one quantizer pair:
    "DequantizeLinear(Reshape(Transpose[0,2,1](Reshape(Squeeze(Split(...))))))"."""
    node = producer(t)
    if node is None:
        return "input"
    name = node.op + (str(list(node.attrs["perm"])).replace(" ", "")
                      if node.op == "Transpose" and "perm" in node.attrs else "")
    through = node.op in LAYOUT_OPS or node.op in ("DequantizeLinear", "QuantizeLinear")
    if not through or not node.inputs:
        return name
    return f"{name}({spelling(node.inputs[0], depth - 1) if depth > 1 else '...'})"


def _separate(graph: gs.Graph, mm: gs.Node, probs: Probs):
    """(q, k, v as _codes_of's tuples, SeparateCodes) for three separate projections, or None."""
    dqs = [producer(mm.inputs[0]), producer(mm.inputs[1])]
    if any(d is None or d.op != "DequantizeLinear" or len(d.outputs[0].outputs) != 1
           for d in dqs) or any(scale_zp(d) is None for d in dqs):
        return None
    found = separate_codes(graph, dqs[0].inputs[0], dqs[1].inputs[0], probs.v_codes)
    if found is None:
        return None
    sep, x = found
    (s_q, z_q), (s_k, z_k) = (scale_zp(d) for d in dqs)
    return (x, 0, 0, s_q, z_q), (x, 1, 0, s_k, z_k), (x, 2, 0), sep


def _qkv_dims(x: gs.Tensor, layout: int) -> tuple[int, int, int] | None:
    """(N, H, D) of X ([B, N, 3, H, D], or [B, N, H, 3·D] for layout 1): its own shape or its
    quantizer's input's; a dim the export left symbolic (timm's reshape(B, N, 3, H, -1), MaxViT's
    reshape(B, -1, 3, H, D)) from the projection output [B, ..., 3·H·D] the Reshape reads."""
    q = producer(x)
    shape = x.shape or (q.inputs[0].shape if q is not None else None)
    if shape is None or len(shape) != (4 if layout else 5):
        return None
    n, heads = shape[1], shape[2 if layout else 3]
    rs = producer(q.inputs[0]) if q is not None and q.op == "QuantizeLinear" else None
    src = rs.inputs[0].shape if rs is not None and rs.op == "Reshape" else None
    width = src[-1] if src and len(src) >= 3 and isinstance(src[-1], int) else None
    if src and width and all(isinstance(d, int) for d in src[1:-1]):
        tokens = int(np.prod(src[1:-1]))
        if isinstance(n, int) and n != tokens:
            return None
        n = tokens
    if not isinstance(n, int) or not isinstance(heads, int) or (not layout and shape[2] != 3):
        return None
    last = shape[3] // 3 if layout and isinstance(shape[3], int) else shape[-1]
    if not isinstance(last, int):
        last = width // (3 * heads) if width and width % (3 * heads) == 0 else None
    return None if last is None else (n, heads, last)


def v_zp(probs: Probs) -> int:
    return int(probs.nodes["v_zero_point"])
