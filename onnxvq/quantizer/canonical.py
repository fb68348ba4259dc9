"""The canonical stage of `quantize`: the model loaded, imported once, canonicalised in place
and recognised on that same graph."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Literal

import onnx
import onnx_graphsurgeon as gs

from onnxvq.core.config import QuantConfig
from onnxvq.core.edit import name_nodes
from onnxvq.core.errors import UsageError
from onnxvq.core.external import is_large
from onnxvq.core.graph import adopt_weights, infer_shapes_into, load_model, to_graph
from onnxvq.core.pipeline import PipelineReport, Validate
from onnxvq.passes.pipelines import canonical_pipeline
from onnxvq.passes.prepare import prepare_input
from onnxvq.recognise.model import recognise
from onnxvq.recognise.structure import ViTStructure


def prepare(proto: onnx.ModelProto, cfg: QuantConfig | None = None, *,
            validate: Validate | None = None, numeric: Literal["end", "each", "none"] = "none",
            sample_shape: Callable[[], tuple[int, ...]] = lambda: (3, 224, 224),
            ) -> tuple[gs.Graph, onnx.ModelProto, PipelineReport, ViTStructure]:
    """The canonical stage on one graph: import `proto` once, canonicalise it in place (exported
    and checked once), recognise the structure on the same graph. Returns the graph (the next
    stage edits it further), the canonical model, the stage's report and the structure.
    An IR version above what folding runs is lowered and symbolic image dims are fixed at
    `sample_shape()` for the import (`passes/prepare.py`); `proto` itself is left as it was."""
    undo = prepare_input(proto, sample_shape)
    try:
        graph = to_graph(proto)
        name_nodes(graph)  # the plan and the passes address nodes by (unique) name
        canonical, report = canonical_pipeline(cfg).run_graph(graph, like=proto,
                                                              validate=validate, numeric=numeric)
    finally:
        undo()
    if is_large(canonical):  # hold the weights once: the graph reads them from `canonical` now
        adopt_weights(graph, canonical)
    infer_shapes_into(graph, canonical)  # recognition reads head shapes off the graph
    return graph, canonical, report, recognise(graph)


def model_proto(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if not isinstance(model, str | os.PathLike):
        raise UsageError(f"model must be a path or an onnx.ModelProto, got {type(model).__name__}")
    return load_model(model)
