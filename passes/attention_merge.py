"""The head merge after P·V, for the fused-attention passes (attention_walk.find_attention):
Transpose [0,2,1,3] then a Reshape to [B, N, H·D] (or MaxViT's [B, h, w, H·D] view), quantized
per-tensor to uint8, every intermediate read once, except by Shape nodes (Hugging Face's exports
read the batch for a Reshape's target off the tensor itself); Hugging Face BEiT's identity
reshape(B, -1, N, D) of the product before the Transpose is walked over. Also the per-tensor
(scale, zero point) reader of a Q/DQ node the attention passes share.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.walk import const_value, producer


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


def merged_output(graph: gs.Graph, t: gs.Tensor, n: int, width: int):
    """(the merged output's QuantizeLinear, the merge's target when it is not [B, N, H·D])."""
    same = _viewed(t, graph)  # HF BEiT's reshape(B, -1, N, D) of [B, H, N, D]
    if same is not None and _keeps_shape(same):
        t = same.outputs[0]
    tr = _sole(t, graph, "Transpose")
    if tr is None or list(tr.attrs.get("perm", [])) != [0, 2, 1, 3]:
        return "attention output is not merged by Transpose [0, 2, 1, 3]"
    rs = _viewed(tr.outputs[0], graph)
    merges = None if rs is None else _merges_heads(rs, n, width)
    if not merges:
        return "merged heads are not reshaped to [B, N, H·D]"
    q = _sole(rs.outputs[0], graph, "QuantizeLinear")
    p = None if q is None else scale_zp(q)
    if p is None or const_value(q.inputs[2]).dtype != np.uint8:
        return "merged output is not quantized per-tensor to uint8 (read in float)"
    return q, (rs.inputs[1] if merges == "view" else None)


def _merges_heads(rs: gs.Node, n: int, width: int) -> bool | str:
    """The Reshape's target is [B, N, H·D]: a constant [0|B, 0|N, H·D], or (a target computed
    from Shape, as exports with a dynamic batch write it, or dynamo's static [B, N, -1]) an
    inferred output shape [*, N, H·D],
    or Concat(batch, [N], [-1 | H·D]) (timm Swin's reshape(B_, N, -1)): the input [B, N, H, D]
    has B·N·H·D elements, so with the batch kept the last axis is H·D. "view" for
    Concat(batch, [h], [w], [-1 | H·D]) with h·w = N (MaxViT's [B, 7, 7, C] windows)."""
    target = const_value(rs.inputs[1])
    if target is not None and target.size == 3 and int(target[1]) in (0, n) and \
            int(target[2]) == width:
        return True
    # else (a static batch's [B, N, -1]) the inferred shape: [*, N, H·D] of B·N·H·D elements
    shape = rs.outputs[0].shape
    if shape is not None and len(shape) == 3 and list(shape[1:]) == [n, width]:
        return True
    cat = producer(rs.inputs[1])
    if cat is None or cat.op != "Concat" or len(cat.inputs) < 3:
        return False
    pieces = [const_value(i) for i in cat.inputs]
    if pieces[0] is not None or not _batch_of(cat.inputs[0]) or \
            not all(p is not None and p.size == 1 for p in pieces[1:]):
        return False
    mid = [int(p.ravel()[0]) for p in pieces[1:-1]]
    if min(mid) < 1 or int(np.prod(mid)) != n or int(pieces[-1].ravel()[0]) not in (-1, width):
        return False
    return True if len(mid) == 1 else "view"


def _viewed(t: gs.Tensor, graph: gs.Graph) -> gs.Node | None:
    """The one Reshape reading t, where its other readers are Shapes (Hugging Face's exports read
    the batch for the Reshape's target off the tensor itself)."""
    views = [r for r in t.outputs if r.op == "Reshape"]
    ok = len(views) == 1 and all(r.op in ("Reshape", "Shape") for r in t.outputs)
    return views[0] if ok and t not in graph.outputs else None


def _keeps_shape(rs: gs.Node) -> bool:
    """A Reshape of [B, H, N, D] (N, D static) to Concat(batch, [-1 | H], [N], [D])."""
    shape = rs.inputs[0].shape
    cat = producer(rs.inputs[1])
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]) or \
            cat is None or cat.op != "Concat" or len(cat.inputs) != 4 or \
            not _batch_of(cat.inputs[0]):
        return False
    rest = [const_value(i) for i in cat.inputs[1:]]
    if any(r is None or r.size != 1 for r in rest):
        return False
    got = [int(r.ravel()[0]) for r in rest]
    return got[1:] == list(shape[2:]) and got[0] in (-1, shape[1])


def _batch_of(t: gs.Tensor) -> bool:
    """t is Unsqueeze(Gather(Shape(·), 0)): some tensor's batch dimension."""
    u = producer(t)
    g = producer(u.inputs[0]) if u is not None and u.op == "Unsqueeze" else None
    idx = const_value(g.inputs[1]) if g is not None and g.op == "Gather" else None
    sh = producer(g.inputs[0]) if idx is not None and int(idx.ravel()[0]) == 0 else None
    return sh is not None and sh.op == "Shape" and sh.attrs.get("start", 0) == 0

