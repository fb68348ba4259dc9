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
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.importers.onnx_importer import OnnxImporter

from onnxvq.core.graph import to_graph
from onnxvq.core.order import _sorted_nodes, mark_tidy, tidy
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.plugins.functions import OPSET
from onnxvq.plugins.ops import all_function_protos, register_functions


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


@pytest.mark.parametrize("opset,bias", [(OPSET, False), (OPSET, True), (21, False)])
def test_mark_tidy_is_graphsurgeons_on_every_function_body(opset, bias):
    """mark_tidy cleans and sorts each com.onnxvq body with tidy's walks: the same nodes, order
    and exported bytes as graphsurgeon's cleanup().toposort(), also for a body shuffled first."""
    for seed, proto in enumerate(all_function_protos(opset, bias)):
        ours, theirs = (OnnxImporter.import_function(proto, model_opset=opset) for _ in "ab")
        order = np.random.default_rng(seed).permutation(len(ours.nodes))
        for f in (ours, theirs):
            f.nodes = [f.nodes[i] for i in order]
        mark_tidy(ours)
        theirs.cleanup().toposort()
        assert _names(ours) == _names(theirs), proto.name
        assert OnnxExporter.export_function(ours).SerializeToString() == \
            OnnxExporter.export_function(theirs).SerializeToString(), proto.name


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


def _dead_ends(model: onnx.ModelProto, seed: int) -> gs.Graph:
    """The tiny ViT shuffled, with a dead branch off every LayerNorm (one node reading two of
    them), a node writing the graph input, and an unused graph input."""
    graph = _shuffled(model, seed)
    norms = [n.outputs[0] for n in graph.nodes if n.op == "LayerNormalization"]
    for i, t in enumerate(norms):
        dead = gs.Variable(f"dead{i}", np.float32)
        graph.nodes.append(gs.Node("Relu", f"dead{i}", inputs=[t], outputs=[dead]))
        graph.nodes.append(gs.Node("Add", f"dead_add{i}", inputs=[dead, norms[0]],
                                   outputs=[gs.Variable(f"dead_sum{i}", np.float32)]))
    graph.nodes.append(gs.Node("Identity", "writes_input", inputs=[norms[0]],
                               outputs=[graph.inputs[0]]))
    graph.inputs.append(gs.Variable("unused", np.float32, [1]))
    return graph


@pytest.mark.parametrize("seed", [4, 5])
def test_cleanup_drops_and_disconnects_what_graphsurgeon_does(seed):
    model = build_tiny_vit(TinyViTConfig())
    ours, theirs = _dead_ends(model, seed), _dead_ends(model, seed)
    dropped = [n for n in ours.nodes if n.name.startswith(("dead", "writes"))]
    tidy(ours)
    theirs.cleanup(remove_unused_graph_inputs=False).toposort()
    assert _names(ours) == _names(theirs)
    assert len(ours.nodes) == len(model.graph.node) and len(ours.inputs) == 2
    assert all(not n.inputs and not n.outputs for n in dropped)
    consumers = {t.name: [c.name for c in t.outputs] for t in ours.tensors().values()}
    assert consumers == {t.name: [c.name for c in t.outputs]
                         for t in theirs.tensors().values()}
    assert gs.export_onnx(ours, do_type_check=False).SerializeToString() == \
        gs.export_onnx(theirs, do_type_check=False).SerializeToString()
