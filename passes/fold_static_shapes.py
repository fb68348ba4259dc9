"""Fold shape arithmetic over static dims that ONNX shape inference cannot see through.

Matches: Shape(x) -> Gather(const idx) | Slice(const range) where the selected dims of x do not
         depend on the batch size. Exporters compute the SDPA scale as 1/sqrt(Shape(q)[-1]) after a
         Reshape whose target shape is itself computed (torch.nn.MultiheadAttention), which data
         propagation leaves unknown.
Refuses: models whose inputs have symbolic dims other than axis 0 (a probe could not tell static
         dims from dims that merely took the same value twice).
Emits:   the selected dims as int64 constants, then folds what became constant (Cast/Sqrt/Div
         chains).

How: the stage's input model (`ctx.original`) runs twice on random inputs, at batch 1 and batch 3,
with every Shape output exposed; a dim equal in both runs is static.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from onnxvq.core.edit import bypass
from onnxvq.core.graph import to_model
from onnxvq.core.order import tidy
from onnxvq.core.pipeline import Pass, PassContext, PassResult
from onnxvq.core.walk import const_value
from onnxvq.passes.fold_graph import fold

_PROBE_BATCHES = (1, 3)


class FoldStaticShapes(Pass):
    id = "fold-static-shapes"
    matches = "Shape -> Gather/Slice over dims that do not follow the batch size"
    emits = "int64 constants, then constant folding"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult(self.id)
        shapes = [n for n in graph.nodes if n.op == "Shape" and n.outputs[0].outputs]
        if not shapes:
            return result
        reason = _symbolic_dims_besides_batch(graph)
        if reason:
            result.refuse("inputs", reason)
            return result
        source = ctx.original if ctx.original is not None else to_model(graph.copy())
        known = {o for n in source.graph.node for o in n.output}
        shapes = [n for n in shapes if n.outputs[0].name in known]
        probes = _probe(source, [n.outputs[0].name for n in shapes])
        for node in shapes:
            values = [p[node.outputs[0].name] for p in probes]
            for user in list(node.outputs[0].outputs):
                if _fold_selection(user, values):
                    result.applied += 1
        if result.applied:
            ort.set_default_logger_severity(3)
            if not fold(graph):  # graphsurgeon's own where `fold` cannot match it exactly
                graph.fold_constants(error_ok=True)
            tidy(graph)
        return result


def _symbolic_dims_besides_batch(graph: gs.Graph) -> str | None:
    for t in graph.inputs:
        for axis, d in enumerate(t.shape or []):
            if axis > 0 and not isinstance(d, int):
                return f"input {t.name!r} has symbolic dim {d!r} on axis {axis}"
    return None


def _probe(model: onnx.ModelProto, names: list[str]) -> list[dict[str, np.ndarray]]:
    """The Shape outputs `names` at each probe batch, run on the stage's input model: the passes
    before this one are numerically neutral and keep Shape outputs' names, so their values there
    are the values here (and the in-memory graph need not be exported for the probe)."""
    from onnxvq.core.runtime import output_session, random_inputs

    # only the shapes as outputs: ORT prunes everything they do not need (and a model over 2 GB
    # is written with only those nodes and weights, not copied)
    sess = output_session(model, [onnx.helper.make_tensor_value_info(
        n, onnx.TensorProto.INT64, None) for n in names], custom_ops=False, optimize=False)
    runs = []
    for b in _PROBE_BATCHES:
        feeds = random_inputs(sess, batch=b, seed=b)
        runs.append(dict(zip(names, sess.run(names, feeds), strict=True)))
    return runs


def _fold_selection(user: gs.Node, values: list[np.ndarray]) -> bool:
    sel = _selected(user, len(values[0]))
    if sel is None:
        return False
    picked = [v[sel] for v in values]
    if any(not np.array_equal(picked[0], p) for p in picked[1:]):
        return False
    const = gs.Constant(f"{user.outputs[0].name}/static", np.asarray(picked[0], dtype=np.int64))
    bypass(user, const)
    return True


def _selected(user: gs.Node, rank: int) -> np.ndarray | int | None:
    """The index expression a Gather/Slice applies to a shape vector, if constant."""
    if user.op == "Gather" and user.attrs.get("axis", 0) == 0:
        idx = const_value(user.inputs[1])
        return None if idx is None else (int(idx) if idx.ndim == 0 else idx.astype(np.int64))
    if user.op == "Slice" and len(user.inputs) >= 3:
        parts = [const_value(t) for t in user.inputs[1:]]
        if any(p is None for p in parts):
            return None
        starts, ends = parts[0], parts[1]
        axes = parts[2] if len(parts) > 2 else np.array([0])
        steps = parts[3] if len(parts) > 3 else np.array([1])
        if starts.size != 1 or int(axes.reshape(-1)[0]) not in (0, -1):
            return None
        return np.arange(rank)[int(starts[0]):int(ends[0]):int(steps.reshape(-1)[0])]
    return None
