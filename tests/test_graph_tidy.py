"""core.order.tidy: graphsurgeon's cleanup + toposort, node for node, without its recursion.

`tidy` orders the nodes itself (`_sorted_nodes`) and skips the com.onnxvq function bodies sorted
when they were added (`mark_tidy`); every test here compares it with graphsurgeon's own
`cleanup().toposort()` on a copy of the same graph, shuffled the same way.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from onnxvq.core.graph import to_graph
from onnxvq.core.order import _sorted_nodes, tidy
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.plugins.ops import register_functions


def _shuffled(model: onnx.ModelProto, seed: int) -> gs.Graph:
    graph = to_graph(model)
    order = np.random.default_rng(seed).permutation(len(graph.nodes))
    graph.nodes = [graph.nodes[i] for i in order]
    return graph


def _names(graph: gs.Graph) -> list[str]:
    return [n.name or n.op for n in graph.nodes]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_node_order_is_graphsurgeons(seed):
    model = build_tiny_vit(TinyViTConfig())
    ours, theirs = _shuffled(model, seed), _shuffled(model, seed)
    shuffled = _names(ours)
    tidy(ours)
    theirs.cleanup(remove_unused_graph_inputs=False).toposort()
    assert len(ours.nodes) == len(model.graph.node)
    assert _names(ours) == _names(theirs) != shuffled


def test_exported_bytes_are_graphsurgeons_with_functions():
    model = build_tiny_vit(TinyViTConfig())
    ours, theirs = _shuffled(model, 3), _shuffled(model, 3)
    for g in (ours, theirs):
        register_functions(g)
    tidy(ours)
    theirs.cleanup(remove_unused_graph_inputs=False).toposort()
    a = gs.export_onnx(ours, do_type_check=False).SerializeToString()
    b = gs.export_onnx(theirs, do_type_check=False).SerializeToString()
    assert a == b


def test_falls_back_on_a_cycle_and_a_subgraph():
    x = gs.Variable("x", np.float32, [1])
    a, b = gs.Variable("a", np.float32, [1]), gs.Variable("b", np.float32, [1])
    n1 = gs.Node("Relu", "n1", inputs=[b], outputs=[a])
    n2 = gs.Node("Relu", "n2", inputs=[a], outputs=[b])
    assert _sorted_nodes([n1, n2]) is None  # graphsurgeon then reports the cycle itself
    body = gs.Graph(nodes=[], inputs=[], outputs=[x])
    n3 = gs.Node("If", "n3", attrs={"then_branch": body, "else_branch": body},
                 inputs=[x], outputs=[gs.Variable("y")])
    assert _sorted_nodes([n3]) is None
    assert _sorted_nodes([]) == []
