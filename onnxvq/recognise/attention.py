"""Attention: every Softmax fed (through scale, bias and window reshapes) by a MatMul of two
activations and feeding a MatMul with an activation, its q, k and v traced back to one projection
each (through L2 normalisation and rotary embedding too), its output projection, heads and scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from onnxvq.core.walk import (
    LAYOUT_OPS,
    const_value,
    data_inputs,
    from_activation_matmul,
    is_linear,
    producer,
    scalar,
    sole_data_consumer,
)
from onnxvq.recognise.activations import match_activation
from onnxvq.recognise.blocks import linear_info
from onnxvq.recognise.structure import Attention

_SCORE_PATH = frozenset({"Mul", "Div", "Add", "Reshape", "Cast", "Transpose"})
_PROBS_PATH = frozenset({"Cast", "Dropout", "Identity", "Reshape"})

# Ops q/k/v may pass through between their projection and the attention MatMul when every data
# input comes from that one projection: cosine attention's L2 normalisation
# x / Expand(Clip(ReduceL2(x))) (SwinV2), rotary embedding x·cos + rot(x)·sin with the class
# token re-attached by Concat (EVA-02), bias Adds and scalar scales, the per-head LayerNorm
# of qk-norm attention (timm's `qk_norm=True`: norm(q)·norm(k)ᵀ; Gemma4's RMSNorms on q, k and v,
# decomposed or one node) and the max-pooled queries of
# Hiera's stage transitions (q.view(.., stride, ..).amax(); SAM2's HieraDet: a MaxPool2d on q
# laid out as a map).
_DERIVED = frozenset({"Add", "Mul", "Div", "Neg", "Clip", "ReduceL2", "Sqrt", "Cast",
                      "LayerNormalization", "ReduceMax", "MaxPool",
                      "Pow", "ReduceMean", "Reciprocal", "RMSNormalization"})  # q/k/v RMSNorm


def trace_linear(t: gs.Tensor) -> gs.Node | None:
    """The one linear every path back from `t` reaches through layout and derived ops.
    (torchvision's dynamo export puts 12 layout ops between the packed in_proj and K.)"""
    found, frontier, seen = {}, [t], set()
    while frontier and len(seen) < 96:
        cur = frontier.pop()
        if cur.name in seen:
            continue
        seen.add(cur.name)
        p = producer(cur)
        if p is None:
            return None  # a graph input: not one projection's output
        if is_linear(p):
            found[p.name] = p
            continue
        ins = [i for i in data_inputs(p) if i.name]  # "" is an omitted optional input
        if p.op not in LAYOUT_OPS and p.op not in _DERIVED and _value_free(cur):
            continue  # a table from shapes and constants (Gemma4's in-graph rotary cos/sin)
        if not ins or (p.op not in LAYOUT_OPS and p.op not in _DERIVED):
            return None
        frontier.extend(ins)
    return next(iter(found.values())) if len(found) == 1 and not frontier else None


def _value_free(t: gs.Tensor, limit: int = 64) -> bool:
    """`t` is computed from constants and Shape reads only: no activation value reaches it."""
    frontier, seen = [t], set()
    while frontier:
        cur = frontier.pop()
        if cur.name in seen or isinstance(cur, gs.Constant):
            continue
        seen.add(cur.name)
        p = producer(cur)
        if p is None or len(seen) > limit:
            return False  # a graph input (or too far to tell)
        if p.op != "Shape":
            frontier.extend(i for i in p.inputs if i.name)
    return True


def attention_at(softmax: gs.Node) -> Attention | None:
    scores = _walk_scores(softmax)
    if scores is None:
        return None
    context_mm = _context_matmul(softmax.outputs[0], scores.mixing)
    if context_mm is None:
        return None
    q, k, v = scores.matmul.inputs[0], scores.matmul.inputs[1], context_mm.inputs[1]
    lin = [trace_linear(x) for x in (q, k, v)]
    if any(x is None for x in lin):
        return None
    return _attention(softmax, scores, context_mm, lin)


@dataclass
class _Scores:
    """What the walk from a Softmax back to its Q·Kᵀ MatMul found on the way."""

    matmul: gs.Node | None = None
    biased: bool = False
    scale: float = 1.0
    path: list[str] = field(default_factory=list)
    mixing: list[str] = field(default_factory=list)
    # heads of a per-head logit scale (cosine attention's exp(clamp(τ)))
    per_head: int | None = None


def _walk_scores(softmax: gs.Node) -> _Scores | None:
    """Back from the Softmax through scale, bias, cast and reshape ops (at most 8) to a MatMul of
    two activations; a talking-heads mixing Linear on the way goes to `mixing`."""
    found, t = _Scores(), softmax.inputs[0]
    for _ in range(8):
        p = producer(t)
        if p is None:
            return None
        if p.op == "MatMul" and len(data_inputs(p)) == 2:
            found.matmul = p
            return found
        if _head_mixing(p):  # talking heads (CaiT): a Linear over the head axis of the scores
            found.mixing.append(p.name)
            t = data_inputs(p)[0]
            continue
        if p.op not in _SCORE_PATH:
            return None
        found.path.append(p.name)
        ins = _score_step(p, found)
        if not ins:
            return None
        t = ins[0]
    return None


def _score_step(p: gs.Node, found: _Scores) -> list[gs.Tensor]:
    """The data inputs to follow past `p`, recording a bias Add or a scale Mul/Div in `found`."""
    ins = data_inputs(p)
    if p.op == "Add" and not (len(ins) == 1 and _head_mixing(producer(ins[0]))):
        found.biased = True  # (not the head-mixing Linear's own bias)
        ins = [i for i in ins if from_activation_matmul(i)] or ins[:1]
    elif p.op in ("Mul", "Div") and len(ins) == 1:
        f = scalar(p.inputs[1])
        if f is None and p.op == "Mul":
            f = scalar(p.inputs[0])
        found.scale *= (1.0 / f) if p.op == "Div" and f else (f or 1.0)
        found.per_head = found.per_head or (_per_head_count(p) if f is None else None)
    return ins


def _attention(softmax: gs.Node, scores: _Scores, context_mm: gs.Node,
               lin: list[gs.Node]) -> Attention:
    """The Attention record of a matched Softmax whose q, k and v trace to the linears `lin`."""
    q, k, v = scores.matmul.inputs[0], scores.matmul.inputs[1], context_mm.inputs[1]
    packed = lin[0] is lin[1] is lin[2]
    # each linear once: LeViT's downsampling attention packs k and v into one, q apart
    distinct = [x for i, x in enumerate(lin) if all(x is not y for y in lin[:i])]
    projections = tuple(linear_info(x) for x in distinct)
    out_node = _out_projection(context_mm.outputs[0])
    out_proj = linear_info(out_node) if out_node is not None and is_linear(out_node) else None
    head_dim = _head_dim(q, v, scores.scale)
    width = projections[0].out_features // (3 if packed else 1)
    if head_dim is None and scores.per_head:
        head_dim = width // scores.per_head
    heads = _heads(q, width, head_dim)
    return Attention(softmax.name, scores.matmul.name, context_mm.name, softmax.inputs[0].name,
                     softmax.outputs[0].name, q.name, k.name, v.name, scores.scale,
                     "packed" if packed else "separate", projections, out_proj, scores.biased,
                     heads, head_dim, tuple(scores.path), tuple(scores.mixing))


def _head_mixing(node: gs.Node | None) -> bool:
    """A square Linear (heads × heads weight) that talking-heads attention applies to the
    scores before the Softmax and to the probabilities after it, heads moved last by Transposes."""
    if node is None or not is_linear(node):
        return False
    lin = linear_info(node)
    return lin.in_features == lin.out_features and lin.in_features <= 64


def _context_matmul(t: gs.Tensor, mixing: list[str]) -> gs.Node | None:
    """A·V: the MatMul of two activations the probabilities reach through value-preserving ops,
    or through a talking-heads mixing Linear (its bias Add and Transposes); those go to `mixing`."""
    for _ in range(12):
        c = sole_data_consumer(t)
        if c is None:
            return None
        if c.op == "MatMul" and len(data_inputs(c)) == 2:
            return c
        if _head_mixing(c):
            mixing.append(c.name)
        elif c.op not in _PROBS_PATH and c.op != "Transpose" and not (
                c.op == "Add" and len(data_inputs(c)) == 1 and mixing):
            return None
        t = c.outputs[0]
    return None


def _out_projection(t: gs.Tensor) -> gs.Node | None:
    """The node after the context (through layout ops); past an activation unit when one sits
    in front of the output projection (LeViT's proj is Hardswish then Linear), or a LayerNorm
    (BEiT-3's sub-LN, timm's `scale_attn_norm`: proj(norm(A·V)))."""
    node = _consumer_through(t, LAYOUT_OPS, None)
    if node is not None and node.op == "LayerNormalization":
        after = _consumer_through(node.outputs[0], LAYOUT_OPS, None)
        return after if after is not None and is_linear(after) else node
    if node is None or is_linear(node):
        return node
    unit = match_activation(node)
    if unit is None or unit[1] is not node.inputs[0]:
        return node
    after = _consumer_through(unit[2], LAYOUT_OPS, None)
    return after if after is not None and is_linear(after) else node


def _heads(q: gs.Tensor, width: int, head_dim: int | None) -> int | None:
    """Q's head axis ([B, heads, N, d]) where shapes are known: LeViT's packed qkv is not three
    equal parts (values are wider than keys). Else the projection width over the head dim."""
    if q.shape and len(q.shape) == 4 and isinstance(q.shape[1], int) and q.shape[1] > 0:
        return int(q.shape[1])
    return width // head_dim if head_dim else None


def _head_dim(q: gs.Tensor, v: gs.Tensor, scale: float) -> int | None:
    """Q's (or V's) last dim; where shape inference lost it (BEiT's relative position bias),
    the 1/sqrt(head_dim) scale on the scores gives it."""
    for t in (q, v):
        if t.shape and isinstance(t.shape[-1], int) and t.shape[-1] > 0:
            return int(t.shape[-1])
    if 0 < scale < 1:
        d = round(scale ** -2)
        if d > 1 and abs(scale - d ** -0.5) < 1e-6:
            return d
    return None


def _per_head_count(node: gs.Node) -> int | None:
    """H when the node scales the [.., H, N, N] scores by a constant of shape [H, 1, 1]."""
    for i in node.inputs:
        v = const_value(i)
        if v is not None and v.ndim >= 3 and v.shape[-2:] == (1, 1) and v.shape[-3] > 1:
            return int(v.shape[-3])
    return None


def _consumer_through(t: gs.Tensor, through: frozenset[str], op: str | None) -> gs.Node | None:
    """The first consumer of `t` that is not a single-path `through` op (must be `op` if given)."""
    for _ in range(12):
        c = sole_data_consumer(t)
        if c is None:
            return None
        if c.op not in through or (op is None and is_linear(c)):
            return c if op is None or c.op == op else None
        t = c.outputs[0]
    return None

