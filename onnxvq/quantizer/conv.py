"""CNN placement: the extra activation sites that let ONNX Runtime run a CNN as int8 operators.

ViT placement quantizes only GEMM inputs, which suits MatMul (ORT fuses DQ→MatMul into
MatMulIntegerToFloat, float output). A Conv has no such float-output fusion: ORT only fuses
DQ→Conv→Q into QLinearConv. So in a CNN (no transformer block recognised) onnxvq also quantizes

- every quantized Conv's output, taken after a Relu or Clip that is its only consumer: ORT's
  ReluQuantFusion / ClipQuantFusion drop the activation when the Q's range lies inside it (Relu
  output → zero point 0), which is the "ReLU fused" QLinearConv;
- both inputs and the output of a residual Add (→ QLinearAdd);
- the input and output of pools (MaxPool runs on uint8 directly; Average/GlobalAveragePool →
  QLinearAveragePool / QLinearGlobalAveragePool).

MaxPool, Flatten and Reshape do not change values, and ORT drops Q/DQ around them only when both
sides carry the same scale and zero point: their output site shares its input's parameters
(`shared`, resolved after calibration).
"""

from __future__ import annotations

from dataclasses import replace

import onnx_graphsurgeon as gs

from onnxvq.core.params import ActivationQParams
from onnxvq.core.walk import data_inputs
from onnxvq.recognise.cnn import is_residual_add

POOLS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool"})
SHARING_OPS = frozenset({"MaxPool", "Flatten", "Reshape", "Squeeze", "Unsqueeze"})
_FUSABLE = frozenset({"Relu", "Clip"})


def fused_output(node: gs.Node) -> gs.Tensor:
    """The node's output, or that of a Relu/Clip that is its only consumer."""
    out = node.outputs[0]
    if len(out.outputs) == 1 and out.outputs[0].op in _FUSABLE:
        return out.outputs[0].outputs[0]
    return out


def cnn_sites(graph: gs.Graph, quantized: set[str]) -> list[tuple[gs.Tensor, gs.Node, str]]:
    """(tensor, consumer, role) triples to add to the plan.

    `quantized` names the weighted Conv/Gemm nodes the plan quantizes; float Convs get no output
    site (a DQ→Conv→Q around a float kernel would only add rounding)."""
    tensors: dict[str, tuple[gs.Tensor, str]] = {}
    for node in graph.nodes:
        if node.op == "Conv" and node.name in quantized:
            out = fused_output(node)
            tensors.setdefault(out.name, (out, "output"))
        elif is_residual_add(node):
            for t in data_inputs(node):
                tensors.setdefault(t.name, (t, "residual"))
            out = fused_output(node)
            tensors.setdefault(out.name, (out, "output"))
        elif node.op in POOLS:
            tensors.setdefault(node.inputs[0].name, (node.inputs[0], "pool"))
            tensors.setdefault(node.outputs[0].name, (node.outputs[0], "output"))
    return [(t, c, role) for t, role in tensors.values() for c in t.outputs if c.op != "Shape"]


def sharing(graph: gs.Graph, sites: set[str]) -> tuple[tuple[str, str], ...]:
    """(site, source site) where a value-preserving op computes one site from another; in
    topological order, so chains resolve front to back."""
    shared = []
    for node in graph.nodes:
        if node.op not in SHARING_OPS or not node.outputs:
            continue
        ins = data_inputs(node)
        if len(ins) == 1 and ins[0].name in sites and node.outputs[0].name in sites:
            shared.append((node.outputs[0].name, ins[0].name))
    return tuple(shared)


def resolve_shared(qparams: dict[str, ActivationQParams],
                   shared: tuple[tuple[str, str], ...]) -> int:
    """Give each shared site its source's scale and zero point (chains resolve in order); returns
    how many it changed."""
    done = 0
    for dst, src in shared:
        if dst in qparams and src in qparams:
            qparams[dst] = replace(qparams[src], role=qparams[dst].role)
            done += 1
    return done
