"""Graph edits every pass shares, written once: rewiring uses of a tensor, Q/DQ node builders.

graphsurgeon removes a node by disconnecting it (`node.outputs.clear()`); the pass's
`graph.cleanup()` then drops it with everything only it fed.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.errors import ValidationError


def replace_uses(old: gs.Tensor, new: gs.Tensor, graph: gs.Graph | None = None) -> int:
    """Point every consumer of `old` at `new` (and the graph output, when `graph` is given and
    `old` is one). Returns the number of inputs rewired."""
    n = 0
    for consumer in list(old.outputs):
        n += replace_input(consumer, old, new)
    if graph is not None and any(t is old for t in graph.outputs):
        _take_output_place(graph, old, new)
    return n


def replace_input(node: gs.Node, old: gs.Tensor, new: gs.Tensor) -> int:
    """Replace `old` by `new` among one node's inputs (every position it occupies)."""
    n = 0
    for i, t in enumerate(node.inputs):
        if t is old:
            node.inputs[i] = new
            n += 1
    return n


def bypass(node: gs.Node, src: gs.Tensor, graph: gs.Graph | None = None) -> None:
    """Remove `node` by handing its (single) output's consumers `src` instead."""
    replace_uses(node.outputs[0], src, graph)
    node.outputs.clear()


def qparam_constants(name: str, scale, zero_point, dtype) -> tuple[gs.Constant, gs.Constant]:
    """The (scale, zero point) initializers of a Q/DQ pair: float32 scale, zero point of the
    quantized type (scalars for per-tensor, vectors for per-axis). Every scale a pass writes
    passes here: a NaN, Inf, zero, negative or subnormal one (1/s overflows in QuantizeLinear) is
    a ValidationError naming the tensor, never a model that computes garbage."""
    s = np.asarray(scale, dtype=np.float32)
    bad = ~np.isfinite(s) | (s < np.finfo(np.float32).tiny)
    if bad.any():
        raise ValidationError(f"quantization scale '{name}/scale' is not a finite positive "
                              f"float32 ({int(bad.sum())} of {s.size} values, first "
                              f"{s.reshape(-1)[np.argmax(bad.reshape(-1))]!r}); nothing was "
                              "written")
    return (gs.Constant(f"{name}/scale", s),
            gs.Constant(f"{name}/zero_point", np.asarray(zero_point, dtype=np.dtype(dtype))))


def quantize_linear(graph: gs.Graph, x: gs.Tensor, scale: gs.Constant, zero_point: gs.Constant,
                    *, name: str, out: gs.Variable | str | None = None,
                    axis: int | None = None) -> gs.Variable:
    """Append x -> QuantizeLinear(scale, zero_point) and return its output (the zero point's
    type). `out` names the output tensor or is an existing one to produce."""
    y = _output(out, f"{name}/quantized", zero_point.values.dtype, x.shape)
    graph.nodes.append(gs.Node("QuantizeLinear", name=name, attrs=_axis(axis),
                               inputs=[x, scale, zero_point], outputs=[y]))
    return y


def dequantize_linear(graph: gs.Graph, q: gs.Tensor, scale: gs.Constant, zero_point: gs.Constant,
                      *, name: str, out: gs.Variable | str | None = None,
                      axis: int | None = None) -> gs.Variable:
    """Append q -> DequantizeLinear(scale, zero_point) -> float32 and return its output. Pass an
    existing tensor as `out` to keep a replaced node's output (and so all its consumers)."""
    y = _output(out, f"{name}/dequantized", np.float32, q.shape)
    graph.nodes.append(gs.Node("DequantizeLinear", name=name, attrs=_axis(axis),
                               inputs=[q, scale, zero_point], outputs=[y]))
    return y


def _take_output_place(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    """`new` replaces graph output `old` under old's name and type: a rewrite must not change the
    model's interface (an intermediate tensor may also lack the type an output needs)."""
    if isinstance(new, gs.Variable) and new.inputs and new not in graph.inputs:
        name = old.name
        old.name, new.name = f"{name}/replaced", name
        new.dtype = new.dtype if new.dtype is not None else old.dtype
        new.shape = new.shape if new.shape is not None else old.shape
    graph.outputs = [new if t is old else t for t in graph.outputs]


def _output(out: gs.Variable | str | None, default: str, dtype, shape) -> gs.Variable:
    if isinstance(out, gs.Variable):
        return out
    shape = list(shape) if shape is not None else None
    return gs.Variable(out or default, dtype=np.dtype(dtype), shape=shape)


def _axis(axis: int | None) -> dict:
    return {} if axis is None else {"axis": axis}


def name_nodes(graph: gs.Graph) -> int:
    """Give every unnamed or duplicate-named node a unique name (`<op>_<i>`). Plans, refusals
    and sidecars address nodes by name, and ONNX only requires names to be unique when present.
    Returns how many nodes were renamed."""
    seen = {n.name for n in graph.nodes if n.name}
    taken: set[str] = set()
    renamed = 0
    for i, node in enumerate(graph.nodes):
        if node.name and node.name not in taken:
            taken.add(node.name)
            continue
        base = f"{node.name or node.op}_{i}"
        name, k = base, 0
        while name in seen or name in taken:
            k += 1
            name = f"{base}_{k}"
        node.name = name
        taken.add(name)
        renamed += 1
    return renamed
