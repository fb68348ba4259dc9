"""One transformer block cut out of the model, with its quantization parameters as graph inputs.

The search calibrators (block-mse, similarity, twin) evaluate many candidate scales on the same
block. The block is sliced out once (`slice_block`: the nodes between the block's input tensor and
its output tensor) and fake-quantized once (`QuantBlock`): every activation site of the plan inside
the block gets `x -> Div(s) -> Round -> Clip(qmin - zp, qmax - zp) -> Mul(s)` (the Q/DQ formula:
zp is an integer) with `s` and both bounds graph inputs, and every weight of a weighted node
becomes a graph input that the caller feeds already fake-quantized (`fake_quant_weight`, the
formula of the quantize-weights pass). One ORT session then serves every candidate. The clip is
the true b-bit code range (not the 8-bit container's), so a 4-bit candidate is judged as a 4-bit
quantizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxvq.calibrate.quant import qrange
from onnxvq.recognise.structure import Block

_EPS = np.float32(1e-12)


def block_bounds(block: Block, model: onnx.ModelProto) -> tuple[str, str] | None:
    """(input tensor, output tensor) of a block: the attention residual's skip input, and the last
    residual's output (pre-norm) or the LayerNorm after it (post-norm). None: not recognisable."""
    if not block.residuals:
        return None
    outputs = {n.name: n.output[0] for n in model.graph.node}
    last = outputs[block.residuals[-1].node]
    if block.placement == "post-norm" and block.norms:
        last = outputs.get(block.norms[-1], last)
    return block.residuals[0].skip, last


def slice_block(model: onnx.ModelProto, inp: str, out: str) -> onnx.ModelProto | None:
    """The nodes computing `out` from `inp` (and constants) as a model with input `inp`; None when
    `out` also depends on another non-constant tensor (the block is not a clean cut)."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    keep, seen, stack, used, kept = [], set(), [out], set(), set()
    while stack:
        t = stack.pop()
        if t in seen or t == inp or not t:
            continue
        seen.add(t)
        if t in inits:
            used.add(t)
            continue
        node = producer.get(t)
        if node is None:
            return None  # a graph input other than the block input
        if id(node) not in kept:
            kept.add(id(node))
            keep.append(node)
            stack.extend(node.input)
    order = {id(n): i for i, n in enumerate(g.node)}
    keep.sort(key=lambda n: order[id(n)])
    typed = {v.name: v for v in (*g.value_info, *g.input, *g.output)}
    graph = helper.make_graph(
        keep, "block", [_value(typed, inp)], [_value(typed, out)],
        initializer=[inits[n] for n in sorted(used)])
    return helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)


def _value(typed: Mapping, name: str) -> onnx.ValueInfoProto:
    v = typed.get(name)
    if v is not None and v.type.tensor_type.elem_type:
        return v
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


@dataclass(frozen=True)
class ActParam:
    """One activation site inside a block: its tensor and the code range of its quantizer."""

    tensor: str
    consumers: tuple[str, ...]
    bits: int
    signed: bool
    symmetric: bool
    role: str

    @property
    def qrange(self) -> tuple[int, int]:
        return qrange(self.bits, self.signed)


@dataclass(frozen=True)
class TwinParam:
    """A twin-uniform site (`calibrate.twin`): kind "softmax" or "gelu"; fed (low, high) steps."""

    tensor: str
    consumers: tuple[str, ...]
    bits: int
    kind: str
    role: str = "twin"


@dataclass(frozen=True)
class WeightParam:
    node: str
    weight: str  # initializer name in the full model
    axis: int
    bits: int


def fake_quant_weight(w: np.ndarray, axis: int, bits: int, scale: np.ndarray) -> np.ndarray:
    """What DequantizeLinear(int codes, scale) of the quantize-weights pass computes (float32)."""
    qmax = 2 ** (bits - 1) - 1
    shape = [1] * w.ndim
    shape[axis] = -1
    s = np.maximum(np.asarray(scale, np.float32), _EPS).reshape(shape)
    return (np.clip(np.rint(w / s), -qmax, qmax) * s).astype(np.float32)


def weight_amax(w: np.ndarray, axis: int) -> np.ndarray:
    other = tuple(i for i in range(w.ndim) if i != axis)
    return np.max(np.abs(w), axis=other).astype(np.float32)


class QuantBlock:
    """A sliced block with fake-quant on `acts` and graph-input weights for `weights`; `extra`
    tensors (layer outputs the similarity objective reads) are exposed as outputs too."""

    def __init__(self, block: onnx.ModelProto, acts: Iterable[ActParam],
                 weights: Iterable[WeightParam], extra: Iterable[str] = ()):
        self.acts = [a for a in acts if _consumed(block, a)]
        self.weights = list(weights)
        inits = {i.name: i for i in block.graph.initializer}
        self.float_weights = {w.node: numpy_helper.to_array(inits[w.weight]) for w in self.weights}
        self.output = block.graph.output[0].name
        self.input = block.graph.input[0].name
        self.extra = list(dict.fromkeys(e for e in extra if e != self.output))
        self.model = _build(block, self.acts, self.weights, self.extra)

    def feeds(self, act_qparams: Mapping[str, tuple[float, float]],
              weight_scales: Mapping[str, np.ndarray],
              only: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Parameter feeds: `(scale, zero_point)` per activation tensor ((low, high) steps for a
        twin site), scales per weight node; `only`: just the parameters of these tensors/nodes."""
        f = {}
        keep = None if only is None else set(only)
        for a in self.acts:
            if keep is not None and a.tensor not in keep:
                continue
            s, z = act_qparams[a.tensor]
            if isinstance(a, TwinParam):
                f[f"{a.tensor}/fq_low"] = np.array(s, np.float32)
                f[f"{a.tensor}/fq_high"] = np.array(z, np.float32)
                if a.kind == "softmax":
                    t = (2 ** (a.bits - 1) - 0.5) * np.float32(s)
                    f[f"{a.tensor}/fq_split"] = np.array(t, np.float32)
                continue
            lo, hi = a.qrange  # clip(round(x/s) + z, lo, hi) - z == clip(round(x/s), lo-z, hi-z)
            f[f"{a.tensor}/fq_scale"] = np.array(s, np.float32)
            f[f"{a.tensor}/fq_lo"] = np.array(lo - z, np.float32)
            f[f"{a.tensor}/fq_hi"] = np.array(hi - z, np.float32)
        for w in self.weights:
            if keep is not None and w.node not in keep:
                continue
            f[f"{w.node}/fq_weight"] = fake_quant_weight(self.float_weights[w.node], w.axis,
                                                         w.bits, weight_scales[w.node])
        return f


def _consumed(block: onnx.ModelProto, a: ActParam) -> bool:
    names = {n.name for n in block.graph.node}
    return any(c in names for c in a.consumers)


def _build(block: onnx.ModelProto, acts: list[ActParam], weights: list[WeightParam],
           extra: list[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(block)
    g = m.graph
    by_name = {n.name: n for n in g.node}
    new_nodes = []
    for a in acts:
        fq = (_twin_nodes(a, new_nodes, g) if isinstance(a, TwinParam)
              else _fake_quant_nodes(a, new_nodes, g))
        for c in a.consumers:
            node = by_name.get(c)
            if node is not None:
                node.input[:] = [fq if t == a.tensor else t for t in node.input]
    for w in weights:
        node = by_name[w.node]
        shape = [int(d) for d in numpy_helper.to_array(
            next(i for i in g.initializer if i.name == node.input[1])).shape]
        name = f"{w.node}/fq_weight"
        node.input[1] = name
        g.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(new_nodes + nodes)  # fake-quant chains read only graph inputs or block tensors
    _toposort(g)
    live = {t for n in g.node for t in n.input}
    kept = [i for i in g.initializer if i.name in live]
    del g.initializer[:]
    g.initializer.extend(kept)
    for e in extra:
        g.output.append(helper.make_tensor_value_info(e, TensorProto.FLOAT, None))
    return m


def _scalar_inputs(g: onnx.GraphProto, *names: str) -> None:
    g.input.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, []) for n in names)


def _const(g: onnx.GraphProto, name: str, value: float) -> str:
    g.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
    return name


def _fake_quant_nodes(a: ActParam, out: list, g: onnx.GraphProto) -> str:
    """Div(s) -> Round -> Clip(qmin - zp, qmax - zp) -> Mul(s): the zero point is an integer, so
    this equals the Q/DQ formula with two elementwise passes fewer (bounds are graph inputs)."""
    s, lo, hi = (f"{a.tensor}/fq_{k}" for k in ("scale", "lo", "hi"))
    _scalar_inputs(g, s, lo, hi)
    return _fq_chain(a.tensor, a.tensor, s, (lo, hi), out, g)


def _fq_chain(x: str, prefix: str, s: str, bounds: tuple[str, str], out: list,
              g: onnx.GraphProto) -> str:
    steps = [("Div", [x, s]), ("Round", None), ("Clip", [None, *bounds]), ("Mul", [None, s])]
    prev = x
    for i, (op, ins) in enumerate(steps):
        inputs = [prev] if ins is None else [prev if v is None else v for v in ins]
        prev = f"{prefix}/fq_{i}"
        out.append(helper.make_node(op, inputs, [prev], name=f"{prefix}/fq_{op}_{i}"))
    return prev


def _twin_nodes(a: TwinParam, out: list, g: onnx.GraphProto) -> str:
    """x = x1 + x2 split at the threshold (softmax) or at 0 (gelu), each part fake-quantized with
    its own step and zero mapped to zero (`calibrate.twin`)."""
    t, k = a.tensor, 2 ** (a.bits - 1) - 1
    low, high = f"{t}/fq_low", f"{t}/fq_high"
    _scalar_inputs(g, low, high)
    x1, x2 = f"{t}/twin_x1", f"{t}/twin_x2"
    if a.kind == "softmax":
        split = f"{t}/fq_split"
        _scalar_inputs(g, split)
        zero = _const(g, f"{t}/twin_zero", 0.0)
        out += [helper.make_node("Less", [t, split], [f"{t}/twin_mask"]),
                helper.make_node("Where", [f"{t}/twin_mask", t, zero], [x1]),
                helper.make_node("Sub", [t, x1], [x2])]
        ranges = ((0, k), (0, k))
    else:
        zero = _const(g, f"{t}/twin_zero", 0.0)
        out += [helper.make_node("Min", [t, zero], [x1]), helper.make_node("Max", [t, zero], [x2])]
        ranges = ((-k, 0), (0, k))
    q1 = _fq_chain(x1, f"{t}/twin_low", low, _bounds(g, f"{t}/twin_low", ranges[0]), out, g)
    q2 = _fq_chain(x2, f"{t}/twin_high", high, _bounds(g, f"{t}/twin_high", ranges[1]), out, g)
    out.append(helper.make_node("Add", [q1, q2], [f"{t}/twin_out"]))
    return f"{t}/twin_out"


def _bounds(g: onnx.GraphProto, prefix: str, qrange) -> tuple[str, str]:
    return (_const(g, f"{prefix}/fq_qmin", qrange[0]), _const(g, f"{prefix}/fq_qmax", qrange[1]))


def _toposort(g: onnx.GraphProto) -> None:
    ready = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        rest = []
        for n in pending:
            if all(x in ready for x in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError("block graph has a cycle or a dangling input")
        pending = rest
    del g.node[:]
    g.node.extend(ordered)
