"""RepQ-ViT: per-channel quantization of a LayerNorm output, deployed as per-tensor.

Matches: LayerNormalization over the last axis with constant gamma (and beta), whose output has
         per-channel quantization parameters (s_c, z_c) in `ctx.channel_qparams` (calibrated on
         the FP32 model), feeding at least one foldable Linear (see `channel_fold`).
Refuses: not over the last axis / gamma or beta not constant / channel count different from the
         parameters; its output (through layout ops) is a graph output; no foldable Linear
         consumer; with `compensate=False`, any consumer that is not a foldable Linear (a post-norm
         residual Add, CCT's attention pooling).
Emits:   LayerNorm(gamma / r, beta / r - b) -> x'        r = s / mean(s), b = s~ (z~ - z)
         Linear:  W' = diag(r) W, bias' = bias + b @ W'  (packed QKV, separate Q/K/V, fc1, head)
         other consumers (`compensate=True`): Mul(Add(x', b), r), the exact original x
         x' then quantizes per tensor with (s~, z~) to the per-channel integer codes; one
         `ReparamRecord` per LayerNorm names the Linear inputs that take (s~, z~).
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
    compensate,
    find_targets,
    fold_linear,
)


class ReparameterizeLayerNorm(Pass):
    id = "reparameterize-layernorm"
    matches = "LayerNormalization with per-channel output qparams feeding Linears"
    emits = "LayerNorm(gamma/r, beta/r - b); Linear W' = diag(r) W, bias' = bias + b W'"

    def __init__(self, *, compensate: bool = True):
        self.compensate = compensate

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult(self.id)
        outputs = frozenset(t.name for t in graph.outputs)
        for node in [n for n in graph.nodes if n.op == "LayerNormalization"]:
            qp = ctx.channel_qparams.get(node.outputs[0].name)
            if qp is None:
                continue
            rp = as_reparam(qp)
            targets = find_targets(node.outputs[0], rp.r.size, outputs)
            reason = self.check(node, rp, targets)
            if reason is not None:
                result.refuse(node.name, reason)
                continue
            result.records.append(self.rewrite(graph, node, rp, targets))
            result.applied += 1
            result.count("linears", len(targets.linears))
            result.count("compensated", result.records[-1].compensated)
        graph.cleanup().toposort()
        return result

    def check(self, node: gs.Node, rp: Reparam, targets: Targets) -> str | None:
        x = node.inputs[0]
        rank = len(x.shape) if x.shape else None
        if rank is None or node.attrs.get("axis", -1) % rank != rank - 1:
            return "LayerNorm not over the last axis (or rank unknown)"
        if x.shape[-1] != rp.r.size:
            return f"{x.shape[-1]} channels but {rp.r.size} calibrated"
        if not all(isinstance(t, gs.Constant) for t in node.inputs[1:]):
            return "LayerNorm gamma/beta not constant"
        if targets.escapes:
            return "LayerNorm output is a graph output"
        if not targets.linears:
            return "no foldable Linear consumes the LayerNorm output"
        if targets.others and not self.compensate:
            kinds = ", ".join(sorted({n.op for n, _ in targets.others}))
            return f"LayerNorm output also feeds {kinds} (not a foldable Linear)"
        return None

    def rewrite(self, graph: gs.Graph, node: gs.Node, rp: Reparam, targets: Targets,
                ) -> ReparamRecord:
        gamma = np.asarray(node.inputs[1].values, dtype=np.float64)
        beta = (np.asarray(node.inputs[2].values, dtype=np.float64) if len(node.inputs) > 2
                else np.zeros_like(gamma))
        node.inputs[1] = gs.Constant(f"{node.name}/reparam_gamma",
                                     (gamma / rp.r).astype(np.float32))
        new_beta = gs.Constant(f"{node.name}/reparam_beta",
                               (beta / rp.r - rp.b).astype(np.float32))
        if len(node.inputs) > 2:
            node.inputs[2] = new_beta
        else:
            node.inputs.append(new_beta)
        for linear, _ in targets.linears:
            fold_linear(graph, linear, rp)
        restored = compensate(graph, targets.others, rp) if targets.others else 0
        tensors = tuple(dict.fromkeys(t.name for _, t in targets.linears))
        return ReparamRecord(node.name, tensors, rp.scale, rp.zero_point,
                             tuple(n.name for n, _ in targets.linears), restored)
