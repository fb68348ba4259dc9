"""Fold an inference-mode BatchNormalization into the Linear (MatMul/Gemm) that feeds it.

LeViT's projections are `Linear -> BatchNorm1d` on the tokens flattened to rows
(`bn(x.flatten(0, 1)).reshape_as(x)`); the TorchScript exporter folds Conv+BN but leaves these.

Matches: MatMul|Gemm(x, W) -> BatchNormalization(γ, β, μ, σ², ε)   (a 2-D linear output), or
         MatMul(x, W) -> Flatten -> BatchNormalization -> Reshape(·, Shape(MatMul output))
         W, γ, β, μ, σ² (and Gemm's C) constant.
Refuses: a BatchNorm in training mode; a linear output read elsewhere too (other than the
         Shape the Reshape restores); a non-constant weight or statistic; channels that are
         not the linear's output features (a Flatten that merges the feature axis with others).
Emits:   MatMul(x, W·k) -> Add((b − μ)·k + β)  (Gemm: its C takes the bias), k = γ / sqrt(σ² + ε)
         per output feature (float64 arithmetic, stored float32); the Add takes over the
         Reshape's (or BatchNorm's) output tensor, so names downstream stay valid. The scale is
         then quantized with the weight per channel, and the recogniser sees a plain biased
         Linear.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import const_value, producer


@dataclass
class _LinearBn:
    linear: gs.Node
    bn: gs.Node
    flatten: gs.Node | None
    reshape: gs.Node | None

    @property
    def out(self) -> gs.Tensor:
        return (self.reshape or self.bn).outputs[0]


def _restoring_reshape(bn: gs.Node, linear_out: gs.Tensor) -> gs.Node | None:
    """The BatchNorm's only consumer, a Reshape back to Shape(linear output)."""
    users = bn.outputs[0].outputs
    if len(users) != 1 or users[0].op != "Reshape":
        return None
    shape = producer(users[0].inputs[1])
    if shape is None or shape.op != "Shape" or shape.inputs[0] is not linear_out:
        return None
    return users[0]


class FoldLinearBatchNorm(RewritePass):
    id = "fold-linear-batchnorm"
    matches = "MatMul|Gemm [-> Flatten] -> BatchNormalization [-> Reshape back]"
    emits = "the linear with the BatchNorm folded into its weight, plus a bias Add (or Gemm C)"
    anchor_ops = ("BatchNormalization",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _LinearBn | None:
        p = producer(node.inputs[0])
        if p is not None and p.op == "Flatten":
            linear = producer(p.inputs[0])
            if linear is None or linear.op != "MatMul":
                return None
            reshape = _restoring_reshape(node, linear.outputs[0])
            return None if reshape is None else _LinearBn(linear, node, p, reshape)
        if p is None or p.op not in ("MatMul", "Gemm"):
            return None
        return _LinearBn(p, node, None, None)

    def check(self, graph: gs.Graph, m: _LinearBn) -> str | None:
        if len(m.bn.outputs) != 1 or m.bn.attrs.get("training_mode", 0):
            return "BatchNormalization in training mode"
        out = m.linear.outputs[0]
        allowed = {id(m.flatten or m.bn), id(producer(m.reshape.inputs[1])) if m.reshape else 0}
        if any(id(c) not in allowed for c in out.outputs) or out in graph.outputs:
            return "the linear output is also read elsewhere"
        if m.linear.op == "Gemm" and m.linear.attrs.get("transA", 0):
            return "a Gemm with transA"
        params = [*m.linear.inputs[1:], *m.bn.inputs[1:5]]
        if not isinstance(m.linear.inputs[1], gs.Constant) or any(
                const_value(t) is None for t in params):
            return "a weight or statistic is not constant"
        n = _out_features(m.linear)
        bias = m.linear.inputs[2:3] if m.linear.op == "Gemm" else []
        if any(const_value(t).size != n for t in m.bn.inputs[1:5]) or any(
                const_value(t).size not in (1, n) for t in bias):
            return "the BatchNorm's channels are not the linear's output features"
        return None

    def rewrite(self, graph: gs.Graph, m: _LinearBn, ctx: PassContext) -> None:
        gamma, beta, mean, var = (const_value(t).astype(np.float64) for t in m.bn.inputs[1:5])
        k = gamma / np.sqrt(var + float(m.bn.attrs.get("epsilon", 1e-5)))
        lin, name = m.linear, m.linear.name or m.linear.outputs[0].name
        w = const_value(lin.inputs[1]).astype(np.float64)
        axis = 0 if lin.op == "Gemm" and lin.attrs.get("transB", 0) else w.ndim - 1
        shape = [1] * w.ndim
        shape[axis] = -1
        lin.inputs[1] = gs.Constant(f"{name}.weight_bn", (w * k.reshape(shape)).astype(np.float32))
        has_c = lin.op == "Gemm" and len(lin.inputs) > 2
        c = const_value(lin.inputs[2]).astype(np.float64) if has_c else np.zeros(k.size)
        c = np.broadcast_to(c * float(lin.attrs.get("beta", 1.0)), (1, k.size)).reshape(-1)
        bias = gs.Constant(f"{name}.bias_bn", ((c - mean) * k + beta).astype(np.float32))
        out = m.out
        m.bn.outputs.clear()
        if m.reshape is not None:
            m.reshape.outputs.clear()
        if lin.op == "Gemm":  # the bias goes into C; the Gemm takes over the output tensor
            lin.attrs["beta"] = 1.0
            if has_c:
                lin.inputs[2] = bias
            else:
                lin.inputs.append(bias)
            lin.outputs.clear()
            lin.outputs.append(out)
            return
        graph.nodes.append(gs.Node("Add", name=f"{name}/bn_bias", inputs=[lin.outputs[0], bias],
                                   outputs=[out]))


def _out_features(linear: gs.Node) -> int:
    w = linear.inputs[1]
    transposed = linear.op == "Gemm" and linear.attrs.get("transB", 0)
    return int(w.shape[0] if transposed else w.shape[-1])
