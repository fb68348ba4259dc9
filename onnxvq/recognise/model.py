"""Recognise ViT structure in a canonicalised graph: the entry points, which run the units'
recognisers in order.

Units: attentions (attention.py), every activation unit (Relu, Gelu, the Erf and Tanh GELU
decompositions, SiLU) between two linears is an MLP (mlp.py, gated forms too), residuals
(residuals.py), RMSNorms (norms.py). Blocks pair an attention residual with the MLP that
consumes it (blocks.py).
Whatever no unit claims is counted in `unrecognised`, never dropped.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx
import onnx_graphsurgeon as gs

from onnxvq.recognise.activations import match_activation
from onnxvq.recognise.attention import attention_at
from onnxvq.recognise.blocks import assemble_blocks, head_linears, patch_embed, unclaimed_ops
from onnxvq.recognise.cnn import summarise_cnn
from onnxvq.recognise.dit import summarise_adaln
from onnxvq.recognise.mlp import mlp_of
from onnxvq.recognise.norms import rms_norm_at
from onnxvq.recognise.residuals import find_residuals
from onnxvq.recognise.structure import Activation, LayerNorm, RmsNorm, ViTStructure


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
    s.rmsnorms = _rmsnorms(graph)
    for node in graph.nodes:
        if node.op == "Softmax":
            att = attention_at(node)
            if att is None:
                s.other_softmax.append(node.name)
            else:
                s.attentions.append(att)
    claimed_linears = {p.node for a in s.attentions for p in a.projections}
    claimed_linears |= {n for a in s.attentions for n in a.head_mixing}
    s.mlps = [m for m in (mlp_of(*a) for a in _activations(graph.nodes)) if m is not None
              and m.fc1.node not in claimed_linears]
    s.residuals = find_residuals(graph, s.attentions, s.mlps)
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


def _rmsnorms(graph: gs.Graph) -> list[RmsNorm]:
    """Each RMSNorm once, at its last node (its normalising Mul, before the γ Mul, is not one)."""
    found = [r for r in (rms_norm_at(n) for n in graph.nodes) if r is not None]
    inner = {n for r in found for n in r.nodes if n != r.node}
    return [r for r in found if r.node not in inner]


def _activations(nodes: Iterable[gs.Node]) -> list[tuple[Activation, gs.Tensor, gs.Tensor]]:
    return [a for a in (match_activation(n) for n in nodes) if a is not None]

