"""Fold an inference-mode BatchNormalization into the Conv that feeds it.

Matches: Conv(x, W[, b]) -> BatchNormalization(γ, β, μ, σ², ε)
         W, b, γ, β, μ, σ² constant; the Conv output read by the BatchNorm only.
Refuses: a BatchNorm in training mode (several outputs), a Conv output read elsewhere too, a
         non-constant weight or statistic.
Emits:   Conv(x, W·k, (b − μ)·k + β) with k = γ / sqrt(σ² + ε) per output channel (float64
         arithmetic, stored float32): the BatchNorm disappears, and its scale is quantized with the
         weight per channel (what Sparsebit does before PTQ). The dynamo exporter leaves every
         BatchNorm separate; the TorchScript exporter already folds them in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import const_value, producer


@dataclass
class _ConvBn:
    conv: gs.Node
    bn: gs.Node


class FoldBatchNorm(RewritePass):
    id = "fold-batchnorm"
    matches = "Conv -> BatchNormalization (inference mode, constant statistics)"
    emits = "Conv with the BatchNorm folded into its weight and bias"
    anchor_ops = ("BatchNormalization",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _ConvBn | None:
        conv = producer(node.inputs[0])
        if conv is None or conv.op != "Conv":
            return None
        return _ConvBn(conv, node)

    def check(self, graph: gs.Graph, m: _ConvBn) -> str | None:
        if len(m.bn.outputs) != 1 or m.bn.attrs.get("training_mode", 0):
            return "BatchNormalization in training mode"
        if len(m.conv.outputs[0].outputs) != 1 or m.conv.outputs[0] in graph.outputs:
            return "the Conv output is also read elsewhere"
        params = [*m.conv.inputs[1:], *m.bn.inputs[1:5]]
        if any(const_value(t) is None for t in params):
            return "a weight or statistic is not constant"
        return None

    def rewrite(self, graph: gs.Graph, m: _ConvBn, ctx: PassContext) -> None:
        gamma, beta, mean, var = (const_value(t).astype(np.float64) for t in m.bn.inputs[1:5])
        k = gamma / np.sqrt(var + float(m.bn.attrs.get("epsilon", 1e-5)))
        w = const_value(m.conv.inputs[1]).astype(np.float64)
        bias = (const_value(m.conv.inputs[2]).astype(np.float64) if len(m.conv.inputs) > 2
                else np.zeros(w.shape[0]))
        name = m.conv.name or m.conv.outputs[0].name
        folded_w = (w * k.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
        folded_b = ((bias - mean) * k + beta).astype(np.float32)
        m.conv.inputs[1] = gs.Constant(f"{name}.weight_bn", folded_w)
        if len(m.conv.inputs) > 2:
            m.conv.inputs[2] = gs.Constant(f"{name}.bias_bn", folded_b)
        else:
            m.conv.inputs.append(gs.Constant(f"{name}.bias_bn", folded_b))
        # the Conv takes over the BatchNorm's output tensor, so names downstream stay valid
        out = m.bn.outputs[0]
        m.bn.outputs.clear()
        m.conv.outputs.clear()
        m.conv.outputs.append(out)
