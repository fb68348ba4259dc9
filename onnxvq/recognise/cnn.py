"""Recognise a convolutional network (ResNet, MobileNet, VGG) where no transformer block is found.

A graph is a CNN when it holds at least one Conv with a constant kernel and no attention. The
summary counts what the CNN quantization placement acts on: convolutions (depthwise: group equal
to the input channels and > 1), BatchNorms still separate (folded by canonicalisation when they
follow a Conv), residual Adds (two activation inputs, one of them reached from a Conv), pools,
linears and activations (Relu, Clip as ReLU6). A ReduceMean over H and W counts as a pool.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.walk import LAYOUT_OPS, const_value, data_inputs, producer, weight_of

POOL_OPS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"})
ACTIVATION_OPS = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish"})


@dataclass
class CnnSummary:
    convs: int = 0
    depthwise: int = 0
    grouped: int = 0  # group > 1 but not depthwise
    batchnorms: int = 0
    residual_adds: int = 0
    pools: int = 0
    linears: int = 0
    activations: Counter = field(default_factory=Counter)
    residuals: list[str] = field(default_factory=list)  # the residual Add node names

    @property
    def counts(self) -> dict[str, int]:
        return {"convs": self.convs, "depthwise": self.depthwise, "batchnorms": self.batchnorms,
                "residual_adds": self.residual_adds, "pools": self.pools,
                "linears": self.linears}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["activations"] = dict(sorted(self.activations.items()))
        return d


def is_depthwise(node: gs.Node) -> bool:
    group = int(node.attrs.get("group", 1))
    w = weight_of(node)
    return group > 1 and w is not None and w.shape[1] == 1


def summarise_cnn(graph: gs.Graph) -> CnnSummary | None:
    """The CNN summary, or None when the graph has no Conv with a constant kernel."""
    convs = [n for n in graph.nodes if n.op == "Conv" and weight_of(n) is not None]
    if not convs:
        return None
    s = CnnSummary(convs=len(convs))
    s.depthwise = sum(is_depthwise(n) for n in convs)
    s.grouped = sum(int(n.attrs.get("group", 1)) > 1 for n in convs) - s.depthwise
    for node in graph.nodes:
        if node.op == "BatchNormalization":
            s.batchnorms += 1
        elif node.op in POOL_OPS or _is_spatial_mean(node):
            s.pools += 1
        elif node.op in ("MatMul", "Gemm") and weight_of(node) is not None:
            s.linears += 1
        elif node.op in ACTIVATION_OPS:
            s.activations[node.op] += 1
        elif is_residual_add(node):
            s.residuals.append(node.name)
    s.residual_adds = len(s.residuals)
    return s


def _is_spatial_mean(node: gs.Node) -> bool:
    """ReduceMean over H and W of an NCHW tensor: the dynamo exporter's global average pool."""
    if node.op != "ReduceMean":
        return False
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1:
        axes = const_value(node.inputs[1])
    return axes is not None and sorted(int(a) % 4 for a in np.ravel(axes)) == [2, 3]


def is_residual_add(node: gs.Node) -> bool:
    """An Add of two activations, one of them computed by a Conv (through BN/activations)."""
    if node.op != "Add":
        return False
    ins = data_inputs(node)
    return len(ins) == 2 and any(_from_conv(t) for t in ins)


def _from_conv(t: gs.Tensor, limit: int = 4) -> bool:
    for _ in range(limit):
        p = producer(t)
        if p is None:
            return False
        if p.op == "Conv":
            return True
        if p.op not in ACTIVATION_OPS | LAYOUT_OPS | {"BatchNormalization", "Add"}:
            return False
        t = p.inputs[0]
    return False
