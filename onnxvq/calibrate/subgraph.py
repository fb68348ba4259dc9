"""Re-run only what a candidate changes: the part of a fake-quantized block a parameter reaches.

A search candidate changes one parameter feed of a `QuantBlock` (an activation site's scale and
zero point, a twin site's steps, a weight). The nodes it can change are the descendants of that
feed; the objective reads only some outputs, so only the nodes that are also ancestors of those
outputs need to run (`affected`). Everything they read from outside that set (the `frontier`:
the block input, tensors computed upstream with the current choice of earlier parameters) is the
same for every candidate of the parameter, so it is computed once per parameter and fed to a
session of the affected nodes alone (`Tail`). For block-mse's last parameters (fc2's input and
weight) that is the fc2 and the residual Add instead of the whole block; for the layer-wise
objectives it is one fake-quant chain and one MatMul. The results equal the whole block's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxvq.core.runtime import make_session


def _affected(g: onnx.GraphProto, params: set[str], outputs: set[str]) -> list[onnx.NodeProto]:
    producer = {o: n for n in g.node for o in n.output}
    down, reach, below = set(params), set(), set()
    for n in g.node:  # graph order is topological: one forward sweep finds all descendants
        if any(t in down for t in n.input):
            down.update(n.output)
            below.add(id(n))
    stack = list(outputs)
    while stack:
        t = stack.pop()
        node = producer.get(t)
        if t in reach or node is None:
            continue
        reach.add(t)
        stack.extend(node.input)
    return [n for n in g.node if id(n) in below and any(o in reach for o in n.output)]


def _pull_shapes(g: onnx.GraphProto, nodes: list[onnx.NodeProto], consts: set[str]) -> list:
    """Add the producers of non-float frontier tensors (Shape/Gather/Concat chains, masks), so
    that every fed frontier tensor is a float with the batch on axis 0 and can be chunked."""
    typed = {v.name: v.type.tensor_type.elem_type for v in g.value_info}
    producer = {o: n for n in g.node for o in n.output}
    keep = {id(n) for n in nodes}
    stack = [t for n in nodes for t in n.input]
    while stack:
        t = stack.pop()
        node = producer.get(t)
        if node is None or id(node) in keep or t in consts:
            continue
        if typed.get(t, TensorProto.FLOAT) != TensorProto.FLOAT or \
                all(i in consts or not i for i in node.input):
            keep.add(id(node))
            stack.extend(node.input)
    return [n for n in g.node if id(n) in keep]


class Tail:
    """The affected nodes of `params` for `outputs` as one ORT session, fed the frontier."""

    def __init__(self, model: onnx.ModelProto, params: Iterable[str], outputs: Iterable[str]):
        g = model.graph
        inits = {i.name for i in g.initializer}
        graph_inputs = {i.name for i in g.input}
        outputs = list(dict.fromkeys(outputs))
        nodes = _pull_shapes(g, _affected(g, set(params), set(outputs)), inits)
        made = {o for n in nodes for o in n.output}
        needed = list(dict.fromkeys(t for n in nodes for t in n.input
                                    if t and t not in made and t not in inits))
        self.feeds = [t for t in needed if t in graph_inputs]  # the block input, parameters
        self.frontier = [t for t in needed if t not in graph_inputs]
        used = {t for n in nodes for t in n.input}
        sub = helper.make_graph(
            nodes, "tail",
            [helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
             for t in self.frontier] + [i for i in g.input if i.name in self.feeds],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
            initializer=[i for i in g.initializer if i.name in used])
        self.model = helper.make_model(sub, opset_imports=model.opset_import,
                                       ir_version=model.ir_version)
        self.model.functions.extend(model.functions)
        self.outputs = outputs
        self.session = make_session(self.model, arena=False)  # many live at once
        self.nodes = len(nodes)


def run_batched(sess, names: list[str], feeds: Mapping[str, np.ndarray],
                batched: Mapping[str, np.ndarray], n: int, batch: int) -> dict[str, np.ndarray]:
    """`names` of `sess` over `n` samples in chunks of `batch`: `batched` arrays are sliced on
    axis 0, `feeds` are passed whole (`batch >= n`: one run, nothing sliced)."""
    if batch >= n:  # one run, arrays whole: their batch need not be on axis 0 ([T, N, C])
        return dict(zip(names, sess.run(names, {**feeds, **batched}), strict=True))
    parts: dict[str, list] = {k: [] for k in names}
    for i in range(0, n, batch):
        chunk = {k: v[i:i + batch] for k, v in batched.items()}
        for k, o in zip(names, sess.run(names, {**feeds, **chunk}), strict=True):
            parts[k].append(o)
    return {k: np.concatenate(v) for k, v in parts.items()}

