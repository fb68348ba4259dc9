"""Per-channel quantization of an activation that no affine op precedes (post-GELU), deployed as
a per-tensor quantizer behind an explicit per-channel rescale whose inverse folds into the Linears.

Matches: a tensor x [..., C] with per-channel quantization parameters (s_c, z_c) in
         `ctx.channel_qparams` that no LayerNorm produces (the MLP activation outputs, calibrated
         on the FP32 model), whose consumers reached through
         channel-keeping layout ops include a foldable Linear (fc2).
Refuses: channel count unknown or different; x (through layout ops) is a graph
         output; no foldable Linear consumer; with `compensate=False`, another kind of consumer.
Emits:   x -> Mul(1/r) [-> Add(-b)] -> x'  -> Linear(W' = diag(r) W, bias' = bias + b @ W')
         other consumers keep x itself. x' quantizes per tensor with (s~, z~) to the per-channel
         codes of x (a `ReparamRecord` names x'). GELU is not positively homogeneous, so 1/r
         cannot fold into fc1 as RepQ-ViT folds it into a LayerNorm: the Mul (and the Add,
         omitted when b = 0, as for a ReLU output whose per-channel zero points are all 0) stay,
         two elementwise float ops.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import Pass, PassContext, PassResult
from onnxvq.passes.channel_fold import (
    Reparam,
    ReparamRecord,
    Targets,
    as_reparam,
    find_targets,
    fold_linear,
)


class ReparameterizeActivation(Pass):
    id = "reparameterize-activation"
    matches = "activation tensors with per-channel qparams feeding Linears (post-GELU)"
    emits = "Mul(1/r) [+ Add(-b)] before the Linears; W' = diag(r) W, bias' = bias + b W'"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult(self.id)
        tensors = graph.tensors()
        outputs = frozenset(t.name for t in graph.outputs)
        for name, qp in ctx.channel_qparams.items():
            x = tensors.get(name)
            if x is not None and x.inputs and x.inputs[0].op == "LayerNormalization":
                continue  # reparameterize-layernorm's
            rp = as_reparam(qp)
            targets = find_targets(x, rp.r.size, outputs) if x is not None else Targets()
            reason = self.check(x, rp, targets)
            if reason is not None:
                result.refuse(name, reason)
                continue
            scaled = self.rewrite(graph, x, rp, targets)
            result.records.append(ReparamRecord(name, (scaled.name,), rp.scale, rp.zero_point,
                                                tuple(n.name for n, _ in targets.linears), 0))
            result.applied += 1
            result.count("linears", len(targets.linears))
        graph.cleanup().toposort()
        return result

    def check(self, x: gs.Tensor | None, rp: Reparam, targets: Targets) -> str | None:
        if x is None:
            return "tensor not in the graph"
        if not x.shape or x.shape[-1] != rp.r.size:
            return f"channel count unknown or not {rp.r.size}"
        if targets.escapes:
            return "tensor is a graph output"
        if not targets.linears:
            return "no foldable Linear consumes it"
        if any(t is not x for _, t in targets.linears):
            return "a Linear reaches it through a layout op (the rescale would need copies)"
        return None

    def rewrite(self, graph: gs.Graph, x: gs.Tensor, rp: Reparam, targets: Targets,
                ) -> gs.Variable:
        out = x
        if np.any(rp.r != 1):  # a centring alone (target trt) has r = 1
            out = gs.Variable(f"{x.name}/reparam_scaled", dtype=x.dtype, shape=x.shape)
            graph.nodes.append(gs.Node("Mul", name=f"{x.name}/reparam_scale", inputs=[
                x, gs.Constant(f"{x.name}/reparam_inv_r", (1.0 / rp.r).astype(np.float32))],
                outputs=[out]))
        if np.any(rp.b != 0):
            shifted = gs.Variable(f"{x.name}/reparam_shifted", dtype=x.dtype, shape=x.shape)
            graph.nodes.append(gs.Node("Add", name=f"{x.name}/reparam_shift", inputs=[
                out, gs.Constant(f"{x.name}/reparam_neg_b", (-rp.b).astype(np.float32))],
                outputs=[shifted]))
            out = shifted
        for linear, _ in targets.linears:
            fold_linear(graph, linear, rp)
            linear.inputs[0] = out
        return out
