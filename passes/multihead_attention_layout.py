"""torch's nn.MultiheadAttention in the batch-first, packed layout the fused attentions walk.

Matches: torch's `F.multi_head_attention_forward` with one packed in-projection (self-attention:
         torchvision's VisionTransformer, nn.TransformerEncoderLayer), as both exporters write it:
         the tokens sequence-first, Y = Add(MatMul(A, W [C, 3C]), b) [N, B, 3C] ->
         Reshape [.., 3, C] -> Unsqueeze 0 -> Transpose [3,1,2,0,4] -> Squeeze 3 -> Gather 0/1/2,
         each piece Reshape [N, B·H, D] -> Transpose [1,0,2] -> Reshape [B, H, N, D] (k's
         also Transpose [1,2,0] -> Reshape [B, H, D, N], kᵀ: dynamo's static batch); and the
         product P [B, H, N, D] (MatMul(probs, v)) -> Transpose [2,0,1,3] -> Reshape [N·B, C] ->
         Gemm(W_o[, b_o], transB) -> Reshape [N, B, C] (-> Transpose [1,0,2] when batch-first).
Refuses: cross-attention (k and v packed by a [C, 2C] projection, q by its own: SigLIP's pooling
         head; the fused ops read q, k, v from one tensor), pieces that are not the three head
         splits (another consumer, another spelling), a head count that does not divide C, v's
         product not read by the head merge above, an output projection other than one constant
         Gemm(transB=1).
Emits:   timm's spelling of the same attention: Add(MatMul(X, W), b) [B, N, 3C] on the batch-first
         tokens X (A's Transpose [1,0,2] cancelled, or one added) -> Reshape [0, 0, 3, H, D] ->
         Transpose [2,0,3,1,4] -> Gather i as q, k, v [B, H, N, D]; P -> Transpose [0,2,1,3] ->
         Reshape [0, 0, C] -> MatMul(W_oᵀ) [-> Add(b_o)] [B, N, C] (a Transpose [1,0,2] after it
         where the model reads the sequence-first output). The same dot products, rows in
         another order: ORT's results agree to float rounding (~1e-6), and the fused-attention
         walkers (attention_walk.py) then find the packed [B, N, 3, H, D] codes and the merge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.edit import replace_uses
from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import const_value, producer, single_consumer

_SEQ_FIRST = [1, 0, 2]


@dataclass
class _Mha:
    unflatten: gs.Node  # Transpose [3,1,2,0,4]
    proj: gs.Node  # the in-projection's MatMul
    bias_add: gs.Node
    heads_out: list  # each piece's [B, H, N, D] Reshape
    product: gs.Node | None  # MatMul(probs, v)
    gemm: gs.Node | None
    seq_out: gs.Node | None  # Reshape [N, B, C]
    width: int  # C
    cross: bool  # k and v packed alone ([C, 2C]): q has its own projection
    k_transposed: bool = False  # k's piece reshaped to kᵀ [B, H, D, N] itself


def _perm(node: gs.Node | None, op: str = "Transpose") -> list | None:
    return list(node.attrs.get("perm", [])) if node is not None and node.op == op else None


def _dims(reshape: gs.Node) -> list:
    """A Reshape's target, entry by entry: an int where constant, else None (a computed batch)."""
    v = const_value(reshape.inputs[1])
    if v is not None:
        return [int(d) for d in np.ravel(v)]
    cat = producer(reshape.inputs[1])
    if cat is None or cat.op != "Concat":
        return []
    out = []
    for t in cat.inputs:
        c = const_value(t)
        out += [int(d) for d in np.ravel(c)] if c is not None else [None]
    return out


def _chain(t: gs.Tensor, ops: tuple) -> list | None:
    """The nodes `ops` (op or (op, perm)) reading `t` one after another, each its only reader."""
    nodes = []
    for op in ops:
        n = single_consumer(t, op if isinstance(op, str) else op[0])
        if n is None or (not isinstance(op, str) and _perm(n) != op[1]):
            return None
        nodes.append(n)
        t = n.outputs[0]
    return nodes


class MultiheadAttentionLayout(RewritePass):
    id = "multihead-attention-layout"
    matches = "nn.MultiheadAttention's sequence-first packed in-projection and head merge"
    emits = "Reshape [B, N, 3, H, D] + Transpose [2,0,3,1,4] + Gather; Transpose + Reshape merge"
    anchor_ops = ("Transpose",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _Mha | None:
        if _perm(node) != [3, 1, 2, 0, 4]:
            return None
        unsq = producer(node.inputs[0])
        unflat = producer(unsq.inputs[0]) if unsq is not None and unsq.op == "Unsqueeze" else None
        add = producer(unflat.inputs[0]) if unflat is not None and unflat.op == "Reshape" else None
        if add is None or add.op != "Add":
            return None
        mm = next((producer(t) for t in add.inputs if producer(t) is not None and
                   producer(t).op == "MatMul"), None)
        w = const_value(mm.inputs[1]) if mm is not None else None
        if w is None or w.ndim != 2 or w.shape[1] not in (2 * w.shape[0], 3 * w.shape[0]):
            return None
        return _Mha(node, mm, add, [], None, None, None, int(w.shape[0]),
                    w.shape[1] == 2 * w.shape[0])

    def check(self, graph: gs.Graph, m: _Mha) -> str | None:
        if m.cross:  # SigLIP's pooling head: one learned query over the image's tokens
            return "cross-attention (k, v packed [C, 2C], q projected alone): no packed q, k, v"
        squeeze = single_consumer(m.unflatten.outputs[0], "Squeeze")
        gathers = list(squeeze.outputs[0].outputs) if squeeze is not None else []
        index = [const_value(g.inputs[1]) if g.op == "Gather" and g.attrs.get("axis", 0) == 0
                 else None for g in gathers]
        if len(gathers) != 3 or any(i is None or i.size != 1 for i in index) or \
                sorted(int(i) for i in index) != [0, 1, 2]:
            return "the unflattened projection is not read by Gather 0, 1, 2 alone (q, k, v)"
        heads_out = [None] * 3
        for g, i in zip(gathers, index, strict=True):
            chain = _chain(g.outputs[0], ("Reshape", ("Transpose", [1, 0, 2]), "Reshape"))
            if chain is None and int(i) == 1:  # kᵀ [B·H, D, N] directly (dynamo, static batch)
                chain = _chain(g.outputs[0], ("Reshape", ("Transpose", [1, 2, 0]), "Reshape"))
                m.k_transposed = chain is not None
            if chain is None or len(_dims(chain[2])) != 4:
                return "a piece is not Reshape [N, B·H, D] -> Transpose [1,0,2] -> " \
                    "Reshape [B, H, N, D]"
            heads_out[int(i)] = chain[2]
        heads = {_dims(r)[1] for r in heads_out}
        if len(heads) != 1 or None in heads or m.width % heads.pop() != 0:
            return "the head count is not one constant that divides the width"
        m.heads_out = heads_out
        v_readers = heads_out[2].outputs[0].outputs
        if len(v_readers) != 1 or v_readers[0].op != "MatMul" or \
                v_readers[0].inputs[1] is not heads_out[2].outputs[0]:
            return "v is not read by one MatMul(probs, v)"
        m.product = v_readers[0]
        merge = _chain(m.product.outputs[0], (("Transpose", [2, 0, 1, 3]), "Reshape", "Gemm",
                                              "Reshape"))
        gemm = merge[2] if merge else None
        if gemm is None or gemm.attrs.get("transB", 0) != 1 or gemm.attrs.get("transA", 0) or \
                gemm.attrs.get("alpha", 1.0) != 1.0 or gemm.attrs.get("beta", 1.0) != 1.0 or \
                any(const_value(t) is None for t in gemm.inputs[1:]):
            return "the head merge is not Transpose [2,0,1,3] -> Reshape -> " \
                "Gemm(W[, b], transB=1) -> Reshape"
        m.gemm, m.seq_out = gemm, merge[3]
        return None

    def rewrite(self, graph: gs.Graph, m: _Mha, ctx: PassContext) -> None:
        name, c = m.unflatten.name, m.width
        heads = _dims(m.heads_out[0])[1]
        d = c // heads
        a = m.proj.inputs[0]
        seq = list(a.shape) if a.shape is not None and len(a.shape) == 3 else [None] * 3
        n, b = seq[0], seq[1]
        node = _Builder(graph)
        x = producer(a).inputs[0] if _perm(producer(a)) == _SEQ_FIRST else \
            node("Transpose", f"{name}/batch_first", [a], [b, n, seq[2]], perm=_SEQ_FIRST)
        y = node("MatMul", f"{name}/in_proj", [x, m.proj.inputs[1]], [b, n, 3 * c])
        bias = next(t for t in m.bias_add.inputs if t is not m.proj.outputs[0])
        y = node("Add", f"{name}/in_proj_bias", [bias, y] if m.bias_add.inputs[0] is bias
                 else [y, bias], [b, n, 3 * c])
        y = node("Reshape", f"{name}/qkv", [y, _ints(f"{name}/qkv_shape", [0, 0, 3, heads, d])],
                 [b, n, 3, heads, d])
        y = node("Transpose", f"{name}/qkv_heads", [y], [3, b, heads, n, d], perm=[2, 0, 3, 1, 4])
        for i, r in enumerate(m.heads_out):
            piece = node("Gather", f"{name}/piece{i}", [y, _ints(f"{name}/i{i}", i)],
                         [b, heads, n, d], axis=0)
            if i == 1 and m.k_transposed:
                piece = node("Transpose", f"{name}/kT", [piece], [b, heads, d, n],
                             perm=[0, 1, 3, 2])
            replace_uses(r.outputs[0], piece)
        o = node("Transpose", f"{name}/merge", [m.product.outputs[0]], [b, n, heads, d],
                 perm=[0, 2, 1, 3])
        o = node("Reshape", f"{name}/merged", [o, _ints(f"{name}/merged_shape", [0, 0, c])],
                 [b, n, c])
        w_t = gs.Constant(f"{m.gemm.name}/weight_t",
                          np.ascontiguousarray(const_value(m.gemm.inputs[1]).T))
        o = node("MatMul", f"{m.gemm.name}/MatMul", [o, w_t], [b, n, c])
        if len(m.gemm.inputs) > 2:  # dynamo drops a zero bias (torch's initial out_proj.bias)
            o = node("Add", f"{m.gemm.name}/Add", [o, m.gemm.inputs[2]], [b, n, c])
        after = single_consumer(m.seq_out.outputs[0], "Transpose")
        if after is not None and _perm(after) == _SEQ_FIRST:
            replace_uses(after.outputs[0], o, graph)
        else:  # the model reads the sequence-first output
            o = node("Transpose", f"{name}/seq_first", [o], [n, b, c], perm=_SEQ_FIRST)
            replace_uses(m.seq_out.outputs[0], o, graph)


class _Builder:
    """Appends one node and returns its float output, shaped: the canonical model's value infos
    are what a later import of it (the gate's rebuild) knows, and LIS needs A·V's rank."""

    def __init__(self, graph: gs.Graph):
        self.graph = graph

    def __call__(self, op: str, name: str, inputs: list, shape: list, **attrs) -> gs.Variable:
        out = gs.Variable(f"{name}_output", dtype=np.float32, shape=shape)
        self.graph.nodes.append(gs.Node(op, name=name, inputs=inputs, outputs=[out],
                                        attrs=attrs))
        return out


def _ints(name: str, v) -> gs.Constant:
    return gs.Constant(name, np.array(v, dtype=np.int64))
