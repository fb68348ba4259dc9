"""Drop an additive attention mask that is zero everywhere (Hugging Face's, exported by dynamo).

    ones(bool) ─Expand [B,1,N,N]─Where(·, 0, -FLT_MAX)─┐
    scores ────────────────────────────────────────────Add─Softmax     ->     scores─Softmax

Hugging Face's ViT builds its attention mask from an all-True boolean mask when no mask is
passed; dynamo keeps it as Where(Expand(constant), 0, -max) over the batch, so the scores'
bias is "computed from the input" (its batch size) and the fused attentions refuse it. Its
value is 0 everywhere.

Matches: Softmax(Add(s, m)) (either operand order) with m provably all zero: a constant, or
         Expand(constant, shape), or Where(c, a, b) with c such a boolean constant (or Expand
         of one) and a, b constants, the values it selects all 0; and m's shape broadcasts into
         s's without enlarging it (each of m's dims 1 or s's own, the same number or symbol).
Refuses: nothing: any other Add before a Softmax is not this pattern (relative-position biases
         and real masks stay for attention_bias to judge).
Emits:   Softmax(s). Bit-exact: s + 0 is s (for s = -0.0 it is +0.0, the same in the softmax).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import const_value, producer


@dataclass
class _Mask:
    softmax: gs.Node
    scores: gs.Tensor


class RemoveZeroAttentionMask(RewritePass):
    id = "remove-zero-attention-mask"
    matches = "Softmax(Add(scores, mask)) with the mask zero everywhere"
    emits = "Softmax(scores)"
    anchor_ops = ("Softmax",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _Mask | None:
        add = producer(node.inputs[0])
        if add is None or add.op != "Add" or len(node.inputs[0].outputs) != 1 or \
                node.inputs[0] in graph.outputs:
            return None
        for s, m in (add.inputs, add.inputs[::-1]):
            if _all_zero(m) and _fits(m.shape, s.shape):
                return _Mask(node, s)
        return None

    def rewrite(self, graph: gs.Graph, m: _Mask, ctx: PassContext) -> None:
        m.softmax.inputs[0] = m.scores


def _constant(t: gs.Tensor) -> np.ndarray | None:
    """A constant, or the constant an Expand broadcasts (its values, not its shape)."""
    v = const_value(t)
    node = producer(t)
    if v is None and node is not None and node.op == "Expand":
        v = const_value(node.inputs[0])
    return v


def _all_zero(t: gs.Tensor) -> bool:
    v = _constant(t)
    if v is not None:
        return v.dtype != np.bool_ and v.size > 0 and not np.any(v)
    node = producer(t)
    if node is None or node.op != "Where":
        return False
    c, a, b = (_constant(i) for i in node.inputs)
    if c is None or a is None or b is None or c.dtype != np.bool_:
        return False
    picked = [v for v, used in ((a, c.any()), (b, not c.all())) if used]
    return all(not np.any(v) for v in picked)


def _fits(mask: list | None, scores: list | None) -> bool:
    """Whether `mask` broadcasts into `scores` leaving `scores`' shape as it is."""
    if mask is None or scores is None or len(mask) > len(scores):
        return False
    tail = scores[len(scores) - len(mask):]
    return all(m == 1 or (m == s and m is not None) for m, s in zip(mask, tail, strict=True))
