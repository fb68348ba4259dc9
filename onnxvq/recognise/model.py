"""Recognise ViT structure in a canonicalised graph.

Anchors: every Softmax fed (through scale, bias and window reshapes) by a MatMul of two
activations and feeding a MatMul with an activation is an attention, its q, k and v traced back to
one projection each (through L2 normalisation and rotary embedding too); every activation unit
(Relu, Gelu, the Erf and Tanh GELU decompositions, SiLU) between two linears is an MLP (gated
forms: mlp.py); every Add of two activations whose one side leads back, through layout ops,
constant bias/scale ops and a branch LayerNorm only, to an attention's output projection or an
MLP's second linear is a residual. Blocks pair an attention residual with the MLP that consumes it.
Whatever no unit claims is counted in `unrecognised`, never dropped.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx
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
from onnxvq.recognise.blocks import (
    assemble_blocks,
    head_linears,
    linear_info,
    patch_embed,
    unclaimed_ops,
)
from onnxvq.recognise.cnn import summarise_cnn
from onnxvq.recognise.dit import summarise_adaln
from onnxvq.recognise.mlp import mlp_of
from onnxvq.recognise.structure import (
    Activation,
    Attention,
    LayerNorm,
    Mlp,
    Residual,
    ViTStructure,
)

_SCORE_PATH = frozenset({"Mul", "Div", "Add", "Reshape", "Cast", "Transpose"})
_PROBS_PATH = frozenset({"Cast", "Dropout", "Identity", "Reshape"})


def recognise_model(model: onnx.ModelProto) -> ViTStructure:
    """Shape-infer a (canonicalised) model and recognise its structure."""
    from onnxvq.core.external import infer_shapes, is_large
    from onnxvq.core.graph import MAX_IR_VERSION, infer_shapes_into, to_graph

    if is_large(model):  # shapes from the weightless skeleton, onto the graph of the model
        graph = to_graph(model)
        infer_shapes_into(graph, model)
        return recognise(graph)
    try:
        model = infer_shapes(model, max_ir=MAX_IR_VERSION, data_prop=True)
    except Exception:
        pass  # shapes only refine head counts; recognition works without them
    return recognise(to_graph(model))


def recognise(graph: gs.Graph) -> ViTStructure:
    s = ViTStructure(opset=graph.opset)
    s.layernorms = [_layernorm(n) for n in graph.nodes if n.op == "LayerNormalization"]
    for node in graph.nodes:
        if node.op == "Softmax":
            att = _attention(node)
            if att is None:
                s.other_softmax.append(node.name)
            else:
                s.attentions.append(att)
    claimed_linears = {p.node for a in s.attentions for p in a.projections}
    claimed_linears |= {n for a in s.attentions for n in a.head_mixing}
    s.mlps = [m for m in (mlp_of(*a) for a in _activations(graph.nodes)) if m is not None
              and m.fc1.node not in claimed_linears]
    s.residuals = _residuals(graph, s.attentions, s.mlps)
    s.blocks = assemble_blocks(graph, s)
    s.patch_embed = patch_embed(graph, s)
    s.head = head_linears(graph, s)
    s.unrecognised = unclaimed_ops(graph, s)
    if not s.blocks:
        s.cnn = summarise_cnn(graph)
    s.adaln = summarise_adaln(graph) if s.layernorms else None
    return s


def _layernorm(n: gs.Node) -> LayerNorm:
    shape = n.inputs[0].shape
    channels = shape[-1] if shape and isinstance(shape[-1], int) else None
    return LayerNorm(n.name, n.inputs[0].name, n.outputs[0].name, channels,
                     tuple(c.name for c in n.outputs[0].outputs))


# Ops q/k/v may pass through between their projection and the attention MatMul when every data
# input comes from that one projection: cosine attention's L2 normalisation
# x / Expand(Clip(ReduceL2(x))) (SwinV2), rotary embedding x·cos + rot(x)·sin with the class
# token re-attached by Concat (EVA-02), bias Adds and scalar scales.
_DERIVED = frozenset({"Add", "Mul", "Div", "Neg", "Clip", "ReduceL2", "Sqrt", "Cast"})


def _trace_linear(t: gs.Tensor) -> gs.Node | None:
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
        if not ins or (p.op not in LAYOUT_OPS and p.op not in _DERIVED):
            return None
        frontier.extend(ins)
    return next(iter(found.values())) if len(found) == 1 and not frontier else None


def _attention(softmax: gs.Node) -> Attention | None:
    scores_mm, biased, scale, t = None, False, 1.0, softmax.inputs[0]
    path: list[str] = []
    mixing: list[str] = []
    per_head = None  # heads of a per-head logit scale (cosine attention's exp(clamp(τ)))
    for _ in range(8):
        p = producer(t)
        if p is None:
            return None
        if p.op == "MatMul" and len(data_inputs(p)) == 2:
            scores_mm = p
            break
        if _head_mixing(p):  # talking heads (CaiT): a Linear over the head axis of the scores
            mixing.append(p.name)
            t = data_inputs(p)[0]
            continue
        if p.op not in _SCORE_PATH:
            return None
        path.append(p.name)
        ins = data_inputs(p)
        if p.op == "Add" and not (len(ins) == 1 and _head_mixing(producer(ins[0]))):
            biased = True  # (not the head-mixing Linear's own bias)
            ins = [i for i in ins if from_activation_matmul(i)] or ins[:1]
        elif p.op in ("Mul", "Div") and len(ins) == 1:
            f = scalar(p.inputs[1])
            if f is None and p.op == "Mul":
                f = scalar(p.inputs[0])
            scale *= (1.0 / f) if p.op == "Div" and f else (f or 1.0)
            per_head = per_head or (_per_head_count(p) if f is None else None)
        if not ins:
            return None
        t = ins[0]
    context_mm = _context_matmul(softmax.outputs[0], mixing)
    if scores_mm is None or context_mm is None:
        return None
    q, k, v = scores_mm.inputs[0], scores_mm.inputs[1], context_mm.inputs[1]
    lin = [_trace_linear(x) for x in (q, k, v)]
    if any(x is None for x in lin):
        return None
    packed = lin[0] is lin[1] is lin[2]
    # each linear once: LeViT's downsampling attention packs k and v into one, q apart
    distinct = [x for i, x in enumerate(lin) if all(x is not y for y in lin[:i])]
    projections = tuple(linear_info(x) for x in distinct)
    out_node = _out_projection(context_mm.outputs[0])
    out_proj = linear_info(out_node) if out_node is not None and is_linear(out_node) else None
    head_dim = _head_dim(q, v, scale)
    width = projections[0].out_features // (3 if packed else 1)
    if head_dim is None and per_head:
        head_dim = width // per_head
    heads = _heads(q, width, head_dim)
    return Attention(softmax.name, scores_mm.name, context_mm.name, softmax.inputs[0].name,
                     softmax.outputs[0].name, q.name, k.name, v.name, scale,
                     "packed" if packed else "separate", projections, out_proj, biased, heads,
                     head_dim, tuple(path), tuple(mixing))


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
    in front of the output projection (LeViT's proj is Hardswish then Linear)."""
    node = _consumer_through(t, LAYOUT_OPS, None)
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


def _activations(nodes: Iterable[gs.Node]) -> list[tuple[Activation, gs.Tensor, gs.Tensor]]:
    return [a for a in (match_activation(n) for n in nodes) if a is not None]


def _residuals(graph: gs.Graph, attentions: list[Attention], mlps: list[Mlp]) -> list[Residual]:
    ends: dict[str, str] = {}
    for a in attentions:
        if a.out_proj is not None:
            ends[a.out_proj.bias_add or a.out_proj.node] = "attention"
    for m in mlps:
        ends[m.fc2.bias_add or m.fc2.node] = "mlp"
    found = []
    for node in graph.nodes:
        if node.op != "Add" or len(data_inputs(node)) != 2:
            continue
        kinds = [_branch_kind(t, ends) for t in node.inputs[:2]]
        if None not in kinds:  # both sides end a branch (LeViT's downsample: x + mlp(x) with x
            # the attention's output): the branch is the side computed from the other
            kinds[0 if _depends_on(node.inputs[1], node.inputs[0]) else 1] = None
        for i, (t, kind) in enumerate(zip(node.inputs[:2], kinds, strict=True)):
            if kind is not None:
                found.append(Residual(node.name, node.inputs[1 - i].name, t.name, kind))
                break
    return found


def _depends_on(t: gs.Tensor, other: gs.Tensor, limit: int = 256) -> bool:
    """Whether `other` is among the tensors `t` is computed from (within `limit` tensors)."""
    frontier, seen = [t], set()
    while frontier and len(seen) < limit:
        cur = frontier.pop()
        if cur is other:
            return True
        if cur.name in seen:
            continue
        seen.add(cur.name)
        p = producer(cur)
        if p is not None:
            frontier.extend(data_inputs(p))
    return False


def _branch_kind(t: gs.Tensor, ends: dict[str, str]) -> str | None:
    """Breadth-first back through layout/constant ops until a branch end or anything else."""
    frontier, seen = [t], set()
    while frontier and len(seen) < 48:
        cur = frontier.pop(0)
        if cur.name in seen:  # Swin's roll (Slice/Slice/Concat) reaches a tensor twice
            continue
        seen.add(cur.name)
        p = producer(cur)
        if p is None:
            continue
        if p.name in ends:
            return ends[p.name]
        constant_op = p.op in ("Add", "Mul") and len(data_inputs(p)) == 1
        # a LayerNorm on the branch: SwinV2's res-post-norm x + norm(attn(x))
        if p.op in LAYOUT_OPS or constant_op or p.op in ("Cast", "LayerNormalization"):
            frontier.extend(data_inputs(p))
    return None
