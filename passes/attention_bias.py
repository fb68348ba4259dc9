"""Constant additive attention biases between the scores MatMul and the Softmax (the fused
attention passes' `find_attention(..., allow_bias=True)`).

`bias_chain` walks back from the Softmax's input over Add(scores, C), C broadcasting to
[1, H, N, N] (Swin / BEiT / Data2Vec / vit_relpos relative positions, LeViT / TinyViT / MaxViT
attention biases), and Reshape [-1, H, N, N] of Add(Reshape(scores, [-1, W, H, N, N]), M) with M
[1, W, 1|H, N, N] (Swin's shifted-window mask, repeating over the batch with period W); any bias
that is not a constant is a refusal reason. `combined_bias` sums the terms in graph order into
the one float32 [W, 1|H, N, N] that the fused attentions' `bias` attribute holds;
`one_term_per_entry` whether adding that sum rounds as the chain of Adds does.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.walk import const_value, producer


def bias_chain(graph: gs.Graph, t: gs.Tensor) -> tuple[gs.Tensor, list] | str:
    """(the tensor before the biases, [(bias, windows)] in graph order) walking back from the
    Softmax's input; each intermediate read only by the next step."""
    terms = []
    while True:
        node = producer(t)
        if node is None or len(t.outputs) != 1 or t in graph.outputs:
            break
        if node.op == "Add":
            const = [const_value(i) for i in node.inputs]
            if all(c is None for c in const):
                return "attention bias is not a constant (computed from the input)"
            side = 1 if const[1] is not None else 0
            terms.append((const[side], 1, None))
            t = node.inputs[1 - side]
        elif node.op == "Reshape" and (window := _window_mask(graph, node)) is not None:
            if isinstance(window, str):
                return window
            terms.append(window[1:])
            t = window[0]
        else:
            break
    return t, terms[::-1]


def _window_mask(graph: gs.Graph, rs: gs.Node):
    """Reshape(Add(Reshape(x, [-1, W, H, N, N]), M), [-1, H, N, N]): (x, M, W), a reason when
    the mask is not constant, None when the Reshape is something else."""
    add = producer(rs.inputs[0])
    if add is None or add.op != "Add" or len(rs.inputs[0].outputs) != 1:
        return None
    inner = [(producer(i), i) for i in add.inputs]
    view = [(p, i) for p, i in inner if p is not None and p.op == "Reshape"]
    outer, target = const_value(rs.inputs[1]), view and const_value(view[0][0].inputs[1])
    if len(view) != 1 or outer is None or target is None or outer.size != 4 or target.size != 5 \
            or len(view[0][1].outputs) != 1 or int(outer[0]) != -1 or int(target[0]) != -1 \
            or list(outer[1:]) != list(target[2:]):
        return None
    mask = const_value(add.inputs[1 - inner.index(view[0])])
    if mask is None:
        return "window mask is not a constant"
    return view[0][0].inputs[0], mask, int(target[1]), [int(d) for d in outer[1:]]


def combined_bias(terms: list, n: int, heads: int) -> np.ndarray | str:
    """The terms summed in float32 in graph order into [W, 1|H, N, N] (exact where all but one
    term is 0 at an entry, as for a 0 / -100 window mask over relative positions)."""
    total, windows = None, 1
    for value, w, dims in terms:
        v = np.asarray(value)
        if v.dtype != np.float32:
            return f"attention bias is {v.dtype}, not float32"
        lead = v.shape[:-3] if v.ndim > 3 else ()
        if w > 1:  # [.., W, 1|H, N, N] -> [W, 1|H, N, N]
            ok = v.ndim >= 4 and v.shape[-4] == w and int(np.prod(v.shape[:-4])) == 1
            v = v.reshape((w,) + v.shape[-3:]) if ok else None
        else:
            ok = int(np.prod(lead)) == 1 and v.ndim >= 1
            v = v.reshape((1,) * (4 - min(v.ndim, 3)) + v.shape[-3:]) if ok else None
        if v is None or v.shape[1] not in (1, heads) or dims not in (None, [heads, n, n]) or \
                any(d not in (1, n) for d in v.shape[2:]) or (windows > 1 and w > 1):
            return f"attention bias {list(np.shape(value))} is not [W, 1|{heads}, {n}, {n}]"
        windows = max(windows, w)
        v = np.broadcast_to(v, v.shape[:2] + (n, n))
        total = v if total is None else total + v
    return np.ascontiguousarray(total, np.float32)


def one_term_per_entry(terms: list, n: int, heads: int) -> bool:
    """Whether at most one of the (valid, combined_bias-checked) terms is nonzero at every
    entry: then (x + b1) + b2 = x + (b1 + b2) exactly in float32 (each side one rounding, of the
    same sum), so one summed bias is bit-exact with the unfused Adds; Swin's relative positions
    under its shifted-window mask are not."""
    nonzero = [combined_bias([t], n, heads) != 0 for t in terms]
    return not np.any(np.sum(np.broadcast_arrays(*nonzero), axis=0) > 1)
