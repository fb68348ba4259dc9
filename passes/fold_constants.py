"""Fold constant subgraphs and the exporter's shape noise.

Matches: any subgraph whose inputs are all constants, and Shape->Gather/Slice chains over static
         dims (the Shape/Slice/Cast/Sqrt/Div chains exporters emit around the SDPA scale, after ONNX
         shape inference with data propagation has made those dims known).
Emits:   their values as initializers; the dynamic batch dimension's shape arithmetic stays.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from onnxvq.core.pipeline import Pass, PassContext, PassResult


class FoldConstants(Pass):
    id = "fold-constants"
    matches = "constant subgraphs; Shape chains over static dims"
    emits = "initializers"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult(self.id)
        before = len(graph.nodes)
        _infer_shapes_in_place(graph)
        ort.set_default_logger_severity(3)  # ORT warns for every Unsqueeze it cannot eliminate
        graph.fold_constants(fold_shapes=True, error_ok=True)
        graph.cleanup(remove_unused_graph_inputs=False)
        _drop_identities(graph)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        result.applied = before - len(graph.nodes)
        result.counts["nodes_removed"] = result.applied
        return result


def _infer_shapes_in_place(graph: gs.Graph) -> None:
    """Give graphsurgeon the shapes it needs to fold Shape ops (it does not infer them itself)."""
    model = gs.export_onnx(graph, do_type_check=False)
    if model.ir_version > 10:
        model.ir_version = 10
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        return  # folding still works on plain constants; shapes only widen what folds
    shaped = gs.import_onnx(inferred)
    by_name = {t.name: t for t in shaped.tensors().values()}
    for name, t in graph.tensors().items():
        src = by_name.get(name)
        if isinstance(t, gs.Variable) and src is not None and src.shape is not None:
            t.shape = src.shape
            t.dtype = t.dtype or src.dtype


def _drop_identities(graph: gs.Graph) -> None:
    """Identity nodes between tensors only rename them; rewire consumers to the source."""
    outputs = set(id(t) for t in graph.outputs)
    for node in list(graph.nodes):
        if node.op != "Identity" or id(node.outputs[0]) in outputs:
            continue
        src, dst = node.inputs[0], node.outputs[0]
        for c in list(dst.outputs):
            for i, t in enumerate(c.inputs):
                if t is dst:
                    c.inputs[i] = src
        node.outputs.clear()
