"""Q-Diffusion's shortcut splitting inside a quantize run: measure the ranges of every Concat part
that feeds a weighted Conv/MatMul on the calibration data, then split where they differ by more
than `QuantConfig.split_shortcut` (`passes/split_shortcut.py`), before placement plans the sites.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxvq.calibrate.collect import collect
from onnxvq.calibrate.observers import MinMaxObserver
from onnxvq.core.graph import to_model
from onnxvq.core.pipeline import PassContext, PassResult
from onnxvq.core.walk import producer, weight_of
from onnxvq.passes.split_shortcut import SplitShortcut


def concat_parts(graph: gs.Graph) -> list[str]:
    """The inputs of every Concat that feeds a Conv/MatMul with a constant weight."""
    names = []
    for node in graph.nodes:
        p = producer(node.inputs[0]) if node.inputs else None
        if p is not None and p.op == "Concat" and weight_of(node) is not None:
            names += [t.name for t in p.inputs if t.name not in names]
    return names


def split_shortcuts(graph: gs.Graph, model: onnx.ModelProto,
                    feeds: Iterable[Mapping[str, np.ndarray]], threshold: float,
                    ) -> tuple[onnx.ModelProto, PassResult]:
    """Split in place; returns the model exported from the edited graph and the pass result."""
    parts = concat_parts(graph)
    if not parts:
        return model, PassResult(SplitShortcut.id)
    observers = collect(model, parts, feeds, MinMaxObserver)
    amax = {n: max(abs(v) for v in o.range()) for n, o in observers.items()}
    result = SplitShortcut(amax, threshold).run(graph, PassContext())
    return (to_model(graph, like=model) if result.applied else model), result
