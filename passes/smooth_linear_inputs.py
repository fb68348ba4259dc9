"""SmoothQuant: per-channel factors s moved from a Linear input activation into the Linear weights.

Matches: a tensor x [..., C] with factors s [C] in `ctx.smooth_factors` (searched on the FP32
         model, `calibrate/smooth.py`), produced by
         - a LayerNormalization over the last axis with constant gamma (and beta), or
         - a Relu of a Linear (MatMul with a constant 2-D weight [+ Add of a constant bias], or
           a Gemm) whose output only the Relu reads (ReLU(z)/s = ReLU(z/s) for s > 0),
         and read (through channel-keeping layout ops, `channel_fold.find_targets`) only by
         foldable Linears.
Refuses: x not in the graph or its channel count not len(s); another producer (GELU, an Add,
         ...: no exact fold); the producer's parameters not constant or shared; x (through layout
         ops) is a graph output; no foldable Linear consumer; any other consumer (a post-norm
         residual Add, CCT's attention pooling: they need x itself).
Emits:   LayerNorm(gamma / s, beta / s), or the producing Linear's output columns and bias / s;
         each consuming Linear W' = diag(s) W. No node is added; in float the graph computes the
         same function (tested to 1e-4).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import Pass, PassContext, PassResult
from onnxvq.passes.channel_fold import Targets, find_targets, foldable_linear


def producer(x: gs.Tensor, outputs: frozenset = frozenset()) -> tuple[str, list[gs.Node]] | str:
    """("layernorm", [ln]) or ("relu", [linear, (bias Add)]), or the reason there is none."""
    if not x.inputs:
        return "x is a graph input or constant"
    node = x.inputs[0]
    if node.op == "LayerNormalization":
        rank = len(node.inputs[0].shape or ())
        if not rank or node.attrs.get("axis", -1) % rank != rank - 1:
            return "LayerNorm not over the last axis (or rank unknown)"
        if not all(isinstance(t, gs.Constant) and len(t.outputs) == 1 for t in node.inputs[1:]):
            return "LayerNorm gamma/beta not constant (or shared)"
        return "layernorm", [node]
    if node.op != "Relu":
        return f"produced by {node.op} (only a LayerNorm or a Relu of a Linear fold exactly)"
    z, chain = node.inputs[0], []
    if _sole_reader(z, outputs) and z.inputs[0].op == "Add" and _const_input(z.inputs[0]):
        chain = [z.inputs[0]]
        z = next(i for i in chain[0].inputs if not isinstance(i, gs.Constant))
    lin = z.inputs[0] if _sole_reader(z, outputs) else None
    if lin is not None and lin.op in ("MatMul", "Gemm") and foldable_linear(
            lin, lin.inputs[0], _in_channels(lin)):
        return "relu", [lin, *chain]
    return "Relu input is not a Linear (+ bias) read only by it"


def _sole_reader(z: gs.Tensor, outputs: frozenset) -> bool:
    return bool(z.inputs) and len(z.outputs) == 1 and z.name not in outputs


def _const_input(add: gs.Node) -> gs.Constant | None:
    consts = [i for i in add.inputs if isinstance(i, gs.Constant)]
    return consts[0] if len(consts) == 1 and len(consts[0].outputs) == 1 else None


def _in_channels(node: gs.Node) -> int:
    w = node.inputs[1]
    if not isinstance(w, gs.Constant) or w.values.ndim != 2:
        return -1
    return w.shape[1] if node.op == "Gemm" and node.attrs.get("transB", 0) else w.shape[0]


class SmoothLinearInputs(Pass):
    id = "smooth-linear-inputs"
    matches = "LayerNorm / Relu(Linear) outputs with SmoothQuant factors read only by Linears"
    emits = "producer / s (gamma, beta or output columns + bias); consumer W' = diag(s) W"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult(self.id)
        tensors = graph.tensors()
        outputs = frozenset(t.name for t in graph.outputs)
        for name, s in ctx.smooth_factors.items():
            s = np.asarray(s, dtype=np.float64)
            reason, targets = refuse(tensors.get(name), s, outputs)
            if reason is not None:
                result.refuse(name, reason)
                continue
            kind, nodes = producer(tensors[name], outputs)
            (_scale_layernorm if kind == "layernorm" else _scale_linear_outputs)(nodes, s)
            for linear, _ in targets.linears:
                _scale_linear_inputs(linear, s)
            result.applied += 1
            result.count(kind, 1)
            result.count("linears", len(targets.linears))
        graph.cleanup()
        return result


def refuse(x: gs.Tensor | None, s: np.ndarray, outputs: frozenset = frozenset(),
           ) -> tuple[str | None, Targets]:
    """(the reason `x` cannot take factors `s`, or None; its consumers). The smoothing
    calibration asks it first, so that refused tensors are not searched."""
    if x is None:
        return "tensor not in the graph", Targets()
    if not x.shape or x.shape[-1] != s.size:
        return f"channel count unknown or not {s.size}", Targets()
    if not np.all(s > 0):
        return "a smoothing factor is not positive", Targets()
    found = producer(x, outputs)
    if isinstance(found, str):
        return found, Targets()
    targets = find_targets(x, s.size, outputs)
    if targets.escapes:
        return "tensor is a graph output", targets
    if not targets.linears:
        return "no foldable Linear consumes it", targets
    if targets.others:
        kinds = ", ".join(sorted({n.op for n, _ in targets.others}))
        return f"also read by {kinds} (not a foldable Linear)", targets
    return None, targets


def _scale_layernorm(nodes: list[gs.Node], s: np.ndarray) -> None:
    ln = nodes[0]
    for k in range(1, len(ln.inputs)):
        c = ln.inputs[k]
        ln.inputs[k] = gs.Constant(f"{c.name}/smooth", (c.values / s).astype(np.float32))


def _scale_linear_outputs(nodes: list[gs.Node], s: np.ndarray) -> None:
    """Output column j of the producing Linear (and its bias) divided by s_j."""
    linear, *bias = nodes
    w = linear.inputs[1]
    trans = linear.op == "Gemm" and linear.attrs.get("transB", 0)
    value = w.values / (s[:, None] if trans else s[None, :])
    linear.inputs[1] = gs.Constant(f"{linear.name}/smooth_W", value.astype(np.float32))
    holders = [(linear, 2)] if linear.op == "Gemm" and len(linear.inputs) > 2 else []
    holders += [(a, a.inputs.index(_const_input(a))) for a in bias]
    for node, k in holders:
        b = node.inputs[k]
        node.inputs[k] = gs.Constant(f"{b.name}/smooth", (b.values / s).astype(np.float32))


def _scale_linear_inputs(linear: gs.Node, s: np.ndarray) -> None:
    """W' = diag(s) W on the input axis."""
    w = linear.inputs[1].values.astype(np.float64)
    trans = linear.op == "Gemm" and linear.attrs.get("transB", 0)
    value = w * (s[None, :] if trans else s[:, None])
    linear.inputs[1] = gs.Constant(f"{linear.name}/smooth_in_W", value.astype(np.float32))
