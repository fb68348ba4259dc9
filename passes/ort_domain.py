"""ONNX Runtime's contrib domain for the `ort_*` lowering passes (target "ort" only)."""

from __future__ import annotations

import onnx_graphsurgeon as gs
from onnx import helper

MS_DOMAIN = "com.microsoft"


def import_ms_domain(graph: gs.Graph) -> None:
    """Add the com.microsoft opset import once (its contrib ops are version 1)."""
    domains = list(graph.import_domains or [helper.make_opsetid("", graph.opset)])
    if not any(d.domain == MS_DOMAIN for d in domains):
        domains.append(helper.make_opsetid(MS_DOMAIN, 1))
    graph.import_domains = domains


def rewire(old: gs.Tensor, new: gs.Tensor, graph: gs.Graph) -> None:
    """Point every consumer of `old` at `new`, and give `new` the name of `old`: the tensor names
    of the FP32 graph survive a lowering, so per-layer probes and `keep_quantized` (sensitivity)
    still find the values they compare."""
    for c in list(old.outputs):
        for i, t in enumerate(c.inputs):
            if t is old:
                c.inputs[i] = new
    old.name, new.name = f"{old.name}/replaced", old.name
    new.dtype, new.shape = new.dtype or old.dtype, new.shape or old.shape
    graph.outputs = [new if t is old else t for t in graph.outputs]
