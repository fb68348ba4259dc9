"""The common matching of the fused-attention passes: packed QKV codes in, merged codes out.

`find_attention(graph, anchor, probs_path)` walks from the softmax node `anchor` to the scores
MatMul(DQ(q), DQ(kᵀ)), from q, k and v back to one packed uint8 tensor X [B, N, 3, H, D] through
Gather(Transpose(X, [2,0,3,1,4]), i) (what hoist-quantize-over-split leaves), and from the
attention product forward through the head merge (Transpose [0,2,1,3], Reshape [B, N, H·D]) to
one per-tensor uint8 QuantizeLinear. `probs_path` is the mode's own part (scores to P·V) and
returns a `Probs`, or a refusal reason; so does `find_attention`. With `allow_bias`, constant
additive biases between the scores MatMul and the Softmax are walked over (attention_bias.py)
into one float32 [W, 1|H, N, N] (`AttentionUnit.bias`); a bias that is not a constant is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.walk import const_value, producer
from onnxvq.passes.attention_bias import bias_chain, combined_bias
from onnxvq.passes.ort_domain import rewire
from onnxvq.plugins.reference.attention import MAX_HEAD_DIM, MAX_TOKENS

_QKV_PERM = [2, 0, 3, 1, 4]


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

    def replace_output(self, graph: gs.Graph, y: gs.Tensor) -> None:
        rewire(self.out_q.outputs[0], y, graph)
        self.out_q.outputs.clear()


def scale_zp(q: gs.Node) -> tuple[np.float32, int] | None:
    """Per-tensor (scale, zero point) of a Q/DQ node with constant parameters, else None."""
    s = const_value(q.inputs[1])
    z = const_value(q.inputs[2]) if len(q.inputs) > 2 else None
    if s is None or z is None or s.size != 1 or z.size != 1:
        return None
    return np.float32(s.reshape(())), int(z.reshape(()))


def _sole(t: gs.Tensor, graph: gs.Graph, op: str) -> gs.Node | None:
    readers = t.outputs
    ok = len(readers) == 1 and readers[0].op == op and t not in graph.outputs
    return readers[0] if ok else None


def _gathered(t: gs.Tensor, graph: gs.Graph) -> tuple[gs.Tensor, int] | None:
    """(X, piece i) when t is piece i of Transpose(X, [2,0,3,1,4]) along axis 0, read once:
    Gather(·, i) (timm's qkv[i]) or Squeeze(Split(·)[i], 0) (its TorchScript unbind)."""
    g = producer(t)
    if g is None or len(t.outputs) != 1:
        return None
    if g.op == "Squeeze":
        axes = const_value(g.inputs[1]) if len(g.inputs) > 1 else g.attrs.get("axes")
        sp = producer(g.inputs[0])
        if axes is None or [int(a) for a in np.ravel(axes)] != [0] or sp is None or \
                sp.op != "Split" or sp.attrs.get("axis", 0) != 0 or len(sp.outputs) != 3 or \
                len(g.inputs[0].outputs) != 1:
            return None
        src, index = sp.inputs[0], sp.outputs.index(g.inputs[0])
    elif g.op == "Gather" and g.attrs.get("axis", 0) == 0:
        idx = const_value(g.inputs[1])
        if idx is None or idx.ndim != 0 or len(g.inputs[0].outputs) != 3:
            return None
        src, index = g.inputs[0], int(idx) % 3
    else:
        return None
    tr = producer(src)
    if tr is None or tr.op != "Transpose" or list(tr.attrs.get("perm", [])) != _QKV_PERM:
        return None
    return tr.inputs[0], index


def _codes_of(dq: gs.Node | None, graph: gs.Graph, transposed: bool):
    """(X, index, scale, zero point) of q/k/v's DequantizeLinear, or None."""
    if dq is None or dq.op != "DequantizeLinear" or len(dq.outputs[0].outputs) != 1:
        return None
    t = dq.inputs[0]
    if transposed:  # kᵀ: Transpose [0,1,3,2] of the gathered k
        tr = producer(t)
        if tr is None or tr.op != "Transpose" or list(tr.attrs.get("perm", [])) != [0, 1, 3, 2]:
            return None
        if len(t.outputs) != 1:
            return None
        t = tr.inputs[0]
    g, p = _gathered(t, graph), scale_zp(dq)
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
    q = _codes_of(producer(mm.inputs[0]), graph, False)
    k = _codes_of(producer(mm.inputs[1]), graph, True)
    if q is None or k is None:
        return "q and kᵀ are not dequantized pieces of hoisted packed QKV codes"
    v = _gathered(probs.v_codes, graph)
    if v is None or not (q[0] is k[0] is v[0]) or (q[1], k[1], v[1]) != (0, 1, 2):
        return "q, k, v are not pieces 0, 1, 2 of one packed code tensor"
    x = q[0]
    shape = _packed_shape(x)
    if x.dtype != np.uint8 or shape is None or len(shape) != 5 or \
            not all(isinstance(d, int) for d in shape[1:]):
        return "packed codes are not uint8 [B, N, 3, H, D] with static N, H, D"
    n, heads, dim = shape[1], shape[3], shape[4]
    if dim > MAX_HEAD_DIM:
        return f"head dim {dim} above {MAX_HEAD_DIM}"
    if n > MAX_TOKENS:
        return f"{n} tokens above {MAX_TOKENS}"
    bias = combined_bias(terms, n, heads) if terms else None
    if isinstance(bias, str):
        return bias
    out_q = _merged_output(graph, probs.product, n, heads * dim)
    if isinstance(out_q, str):
        return out_q
    s_o, z_o = scale_zp(out_q)
    common = dict(num_heads=heads, q_zero_point=q[3], k_zero_point=k[3], v_zero_point=v_zp(probs),
                  qk_scale=float(np.float32(q[2]) * np.float32(k[2])), out_scale=float(s_o),
                  out_zero_point=z_o)
    return AttentionUnit(anchor, x, common, probs.v_scale, out_q, probs, bias)


def _packed_shape(x: gs.Tensor) -> list | None:
    """X's shape [B, N, 3, H, D]: its own, or its quantizer's input's; a head dim the export
    left symbolic (timm's reshape(B, N, 3, H, -1) in BEiT and Swin) from the Reshape's input
    width 3·H·D when that is static."""
    q = producer(x)
    shape = x.shape or (q.inputs[0].shape if q is not None else None)
    if shape is None or len(shape) != 5 or isinstance(shape[4], int):
        return shape
    rs = producer(q.inputs[0]) if q is not None and q.op == "QuantizeLinear" else None
    src = rs.inputs[0].shape if rs is not None and rs.op == "Reshape" else None
    if src and len(src) == 3 and isinstance(src[-1], int) and \
            all(isinstance(d, int) for d in shape[1:4]) and \
            (not isinstance(src[1], int) or src[1] == shape[1]) and \
            src[-1] % (shape[2] * shape[3]) == 0:
        return [*shape[:4], src[-1] // (shape[2] * shape[3])]
    return shape


def v_zp(probs: Probs) -> int:
    return int(probs.nodes["v_zero_point"])


def _merged_output(graph: gs.Graph, t: gs.Tensor, n: int, width: int) -> gs.Node | str:
    tr = _sole(t, graph, "Transpose")
    if tr is None or list(tr.attrs.get("perm", [])) != [0, 2, 1, 3]:
        return "attention output is not merged by Transpose [0, 2, 1, 3]"
    rs = _sole(tr.outputs[0], graph, "Reshape")
    if rs is None or not _merges_heads(rs, n, width):
        return "merged heads are not reshaped to [B, N, H·D]"
    q = _sole(rs.outputs[0], graph, "QuantizeLinear")
    p = None if q is None else scale_zp(q)
    if p is None or const_value(q.inputs[2]).dtype != np.uint8:
        return "merged output is not quantized per-tensor to uint8 (read in float)"
    return q


def _merges_heads(rs: gs.Node, n: int, width: int) -> bool:
    """The Reshape's target is [B, N, H·D]: a constant [0|B, 0|N, H·D], or (a target computed
    from Shape, as exports with a dynamic batch write it) an inferred output shape [*, N, H·D],
    or Concat(batch, [N], [-1 | H·D]) (timm Swin's reshape(B_, N, -1)): the input [B, N, H, D]
    has B·N·H·D elements, so with the batch kept the last axis is H·D."""
    target = const_value(rs.inputs[1])
    if target is not None:
        return target.size == 3 and int(target[1]) in (0, n) and int(target[2]) == width
    shape = rs.outputs[0].shape
    if shape is not None and len(shape) == 3 and list(shape[1:]) == [n, width]:
        return True
    cat = producer(rs.inputs[1])
    if cat is None or cat.op != "Concat" or len(cat.inputs) != 3:
        return False
    pieces = [const_value(i) for i in cat.inputs]
    return pieces[0] is None and _batch_of(cat.inputs[0]) and \
        all(p is not None and p.size == 1 for p in pieces[1:]) and \
        int(pieces[1].ravel()[0]) == n and int(pieces[2].ravel()[0]) in (-1, width)


def _batch_of(t: gs.Tensor) -> bool:
    """t is Unsqueeze(Gather(Shape(·), 0)): some tensor's batch dimension."""
    u = producer(t)
    g = producer(u.inputs[0]) if u is not None and u.op == "Unsqueeze" else None
    idx = const_value(g.inputs[1]) if g is not None and g.op == "Gather" else None
    sh = producer(g.inputs[0]) if idx is not None and int(idx.ravel()[0]) == 0 else None
    return sh is not None and sh.op == "Shape" and sh.attrs.get("start", 0) == 0

