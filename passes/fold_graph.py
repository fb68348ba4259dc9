"""`fold`: graphsurgeon's `Graph.fold_constants()` without its copy of the whole graph.

graphsurgeon folds in five steps: Constant nodes lowered to constants, shape-tensor Cast pairs
elided, the nodes that depend on constants only found, Shape/Gather/Slice over static dims
folded, and the constant-only nodes evaluated in one ONNX Runtime session. Steps 3-5 run on a
copy of the graph (graph.copy(): ~60 ms of the ~100 ms a fold of a ViT export takes), whose
results it writes back. `fold` does steps 1 and 3-5 on the graph itself, each with graphsurgeon's
rules (the same tensors become the same constants: the same shapes, and the same ONNX Runtime
kernels compute the values), and hands back (False, nothing changed) what it does not repeat: a
Cast pair step 2 could elide, an If or other subgraph, local functions, a Constant node with an
unusual attribute. The caller then runs graphsurgeon's own. fold-constants and
fold-static-shapes use it; tests/passes/test_fold_graph.py compares the two on every corpus
export.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort

log = logging.getLogger(__name__)

_NO_FOLD = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
_ELIDED = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Equal", "Greater", "Less",
                     "Concat"})  # the ops graphsurgeon's cast elision looks through
_CONSTANT_ATTRS = frozenset({"value", "value_float", "value_floats", "value_int", "value_ints"})


def fold(graph: gs.Graph) -> bool:
    """Fold `graph`'s constants in place as `graph.fold_constants(fold_shapes=True,
    error_ok=True)` does (cleanup is the caller's); False, with the graph untouched, where only
    graphsurgeon's own fold is exact."""
    if graph.functions or any(_needs_graphsurgeon(n) for n in graph.nodes):
        return False
    lowered = _lowered_constants(graph)
    if lowered is None:
        return False
    for tensor, value in lowered:
        tensor.to_constant(value)
        tensor.inputs.clear()
    tensors = list(graph.tensors().values())
    known = _foldable(graph, {t.name: t for t in tensors if isinstance(t, gs.Constant)})
    for shape_fold in (_gathered_dims, _sliced_dims, _whole_shape):
        try:
            for tensor in tensors:
                value = shape_fold(tensor, known)
                if value is not None:
                    tensor.to_constant(value)
                    tensor.inputs.clear()
                    known[tensor.name] = tensor
        except Exception as exc:  # noqa: BLE001 - graphsurgeon skips the rest of that step too
            log.debug("shape folding step %s stopped: %s", shape_fold.__name__, exc)
            continue
        known = _foldable(graph, known)
    # graphsurgeon's test, literally: it compares the consumers' *node* names with the folded
    # tensor names, so it evaluates (nearly) every folded tensor; cleanup drops the inner ones
    wanted = [t for t in known.values() if not isinstance(t, gs.Constant)
              and (not t.outputs or any(c.name not in known for c in t.outputs))]
    values = _evaluate(graph, wanted, known) if wanted else []
    for tensor, value in zip(wanted, values or [], strict=False):
        tensor.to_constant(value)
        tensor.inputs.clear()
    return True


def _needs_graphsurgeon(node: gs.Node) -> bool:
    """A node only graphsurgeon's fold handles exactly: an If (it flattens a constant one) or
    another subgraph, or an op its cast elision could rewrite (a Cast on an input and a Cast
    reading an output)."""
    if node.op == "If" or any(isinstance(v, gs.Graph) for v in node.attrs.values()):
        return True
    return (node.op in _ELIDED and any(p.op == "Cast" for t in node.inputs for p in t.inputs)
            and any(c.op == "Cast" for t in node.outputs for c in t.outputs))


def _lowered_constants(graph: gs.Graph) -> list[tuple[gs.Tensor, np.ndarray]] | None:
    """(tensor, value) for every Constant node's output, as graphsurgeon lowers them; None for a
    Constant node it would warn about or skip."""
    out = []
    for tensor in graph.tensors().values():
        if len(tensor.inputs) != 1 or tensor.inputs[0].op != "Constant":
            continue
        attrs = tensor.inputs[0].attrs
        if len(attrs) != 1:
            return None
        name, value = next(iter(attrs.items()))
        if name not in _CONSTANT_ATTRS or isinstance(value, gs.Node.AttributeRef):
            return None
        out.append((tensor, value._values if isinstance(value, gs.Constant) else np.array(value)))
    return out


def _foldable(graph: gs.Graph, known: dict[str, gs.Tensor]) -> dict[str, gs.Tensor]:
    """`known` plus the outputs of every node (in graph order) whose inputs are all known."""
    for node in graph.nodes:
        if node.op in _NO_FOLD or any(isinstance(v, gs.Node.AttributeRef)
                                      for v in node.attrs.values()):
            continue
        if all(t.name in known for t in node.inputs if not t.is_empty()):
            known.update((o.name, o) for o in node.outputs)
    return known


def _shape_input(tensor: gs.Tensor, op: str, known: dict) -> tuple[gs.Node, gs.Tensor] | None:
    """(the `op` node producing `tensor`, the input of the Shape that produces its first input)
    when that input is not already known; `op` "Shape": the Shape itself and its input."""
    if len(tensor.inputs) != 1 or tensor.inputs[0].op != op:
        return None
    node = tensor.inputs[0]
    shape = node if op == "Shape" else _producer(node.inputs[0], "Shape")
    if shape is None or shape.inputs[0].name in known or shape.inputs[0].shape is None:
        return None
    return node, shape.inputs[0]


def _producer(tensor: gs.Tensor, op: str) -> gs.Node | None:
    return tensor.inputs[0] if len(tensor.inputs) == 1 and tensor.inputs[0].op == op else None


def _static(dims) -> bool:
    return all(isinstance(d, int) and d >= 0 for d in dims)


def _whole_shape(tensor: gs.Tensor, known: dict) -> np.ndarray | None:
    found = _shape_input(tensor, "Shape", known)
    if found is None or not _static(found[1].shape):
        return None
    return np.array(found[1].shape, dtype=np.int64)


def _gathered_dims(tensor: gs.Tensor, known: dict) -> np.ndarray | None:
    found = _shape_input(tensor, "Gather", known)
    if found is None or not isinstance(found[0].inputs[1], gs.Constant):
        return None
    dims, idx = found[1].shape, found[0].inputs[1].values
    picked = [dims[int(idx)]] if not idx.shape else [dims[i] for i in idx]
    if not _static(picked):
        return None
    return np.array(picked[0] if not idx.shape else picked, dtype=np.int64)


def _sliced_dims(tensor: gs.Tensor, known: dict) -> np.ndarray | None:
    found = _shape_input(tensor, "Slice", known)
    if found is None:
        return None
    node, inp = found
    args = _slice_args(node)
    if args is None:
        return None
    start, end, step = args
    dims = inp.shape[start:end:step]
    return np.array(dims, dtype=np.int64) if _static(dims) else None


def _slice_args(node: gs.Node) -> tuple | None:
    """(start, end, step) of a Slice over axis 0 of a shape vector with constant arguments."""
    ins, attrs = node.inputs, node.attrs
    if len(ins) >= 3:
        if not all(isinstance(t, gs.Constant) for t in ins[1:3]):
            return None
        start, end = _first(ins[1]), _first(ins[2])
    elif "starts" in attrs and "ends" in attrs:
        start, end = attrs["starts"][0], attrs["ends"][0]
    else:
        return None
    axis = (_first(ins[3]) if isinstance(ins[3], gs.Constant) else None) if len(ins) > 3 \
        else attrs.get("axes", [0])[0]
    step = (_first(ins[4]) if isinstance(ins[4], gs.Constant) else None) if len(ins) > 4 \
        else attrs.get("steps", [1])[0]
    if axis is None or axis != 0 or step is None:
        return None
    return start, end, step


def _first(t: gs.Constant):
    return t.values if not t.shape else list(t.values)[0]


def _evaluate(graph: gs.Graph, outputs: list[gs.Tensor], known: dict) -> list | None:
    """The values of `outputs`, computed by ONNX Runtime from the graph's constant-only nodes
    (graphsurgeon's session runs the same nodes: its copy pruned to them); None (folding nothing,
    as graphsurgeon does with error_ok) when the session fails."""
    from onnx_graphsurgeon.exporters.onnx_exporter import export_onnx

    nodes = [n for n in graph.nodes if n.outputs and all(o.name in known for o in n.outputs)]
    part = gs.Graph(nodes=nodes, inputs=[], outputs=outputs, opset=graph.opset,
                    import_domains=graph.import_domains, ir_version=graph.ir_version)
    try:
        model = export_onnx(part, do_type_check=False)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run([t.name for t in outputs], {})
    except Exception as exc:  # noqa: BLE001 - ORT's own error types; graphsurgeon warns too
        log.warning("constant folding: inference failed (%s)", str(exc).splitlines()[0][:200])
        return None
