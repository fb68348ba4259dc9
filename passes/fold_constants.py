"""Fold constant subgraphs and the exporter's shape noise.

Matches: any subgraph whose inputs are all constants, and Shape->Gather/Slice chains over static
         dims (the Shape/Slice/Cast/Sqrt/Div chains exporters emit around the SDPA scale, after ONNX
         shape inference with data propagation has made those dims known).
Emits:   their values as initializers; the dynamic batch dimension's shape arithmetic stays.
Needs:   the tensor shapes (graphsurgeon infers none): run it in a `Pipeline(infer_shapes=True)`,
         as `passes.pipelines.CANONICAL` does; without them only plain constants fold.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs
import onnxruntime as ort

from onnxvq.core.edit import bypass
from onnxvq.core.order import tidy
from onnxvq.core.pipeline import Pass, PassContext, PassResult
from onnxvq.passes.fold_graph import fold


class FoldConstants(Pass):
    id = "fold-constants"
    matches = "constant subgraphs; Shape chains over static dims"
    emits = "initializers"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult(self.id)
        before = len(graph.nodes)
        ort.set_default_logger_severity(3)  # ORT warns for every Unsqueeze it cannot eliminate
        if not fold(graph):  # graphsurgeon's own where `fold` cannot match it exactly
            graph.fold_constants(fold_shapes=True, error_ok=True)
        graph.cleanup(remove_unused_graph_inputs=False)
        _drop_identities(graph)
        tidy(graph)
        result.applied = before - len(graph.nodes)
        result.counts["nodes_removed"] = result.applied
        return result


def _drop_identities(graph: gs.Graph) -> None:
    """Identity nodes between tensors only rename them; rewire consumers to the source."""
    outputs = set(id(t) for t in graph.outputs)
    for node in list(graph.nodes):
        if node.op != "Identity" or id(node.outputs[0]) in outputs:
            continue
        bypass(node, node.inputs[0])
