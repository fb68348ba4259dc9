"""Separate q, k, v projections for the fused-attention passes (attention_walk.find_attention):
Hugging Face ViT / DeiT / BEiT / Data2Vec / Swin write three Linears, each quantized on its own.

Matches: each operand of Q·Kᵀ and P·V as DQ(Q(Transpose(Reshape(P)))): P a projection output
         [B, N, H·D], the Reshape to [B, N, H, D] (N, H·D and D static on either side), the
         Transpose [0,2,1,3] (q,
         v) or [0,2,3,1] (kᵀ), a per-tensor uint8 QuantizeLinear with constant scale and zero
         point, every intermediate read once; the three P distinct, of one N, H and D.
Emits:   nothing until the attention is fused (`SeparateCodes.emit`, called by the rewrite):
         then Q(P) with each operand's own scale and zero point, Reshape [-1, N, 1, H, D] and one
         Concat on axis 2, the packed codes [B, N, 3, H, D] the fused op reads. The codes are the
         ones the unfused graph computes (a per-tensor quantize commutes with Reshape and
         Transpose); the fused op's q, k and v keep their own scales and zero points (the DQs').
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.walk import const_value, producer

_PERMS = {"q": [0, 2, 1, 3], "k": [0, 2, 3, 1], "v": [0, 2, 1, 3]}


@dataclass
class SeparateCodes:
    x: gs.Variable  # the packed codes [B, N, 3, H, D], produced by `emit`
    pieces: list  # [(P, its QuantizeLinear)] for q, k, v
    n: int
    heads: int
    dim: int

    def emit(self, graph: gs.Graph) -> None:
        parts = []
        for i, (p, q) in enumerate(self.pieces):
            name = f"{self.x.name}/{'qkv'[i]}"
            codes = gs.Variable(f"{name}/codes", dtype=np.uint8)
            graph.nodes.append(gs.Node("QuantizeLinear", name=f"{name}/QuantizeLinear",
                                       inputs=[p, *q.inputs[1:]], outputs=[codes]))
            target = gs.Constant(f"{name}/shape",
                                 np.array([-1, self.n, 1, self.heads, self.dim], np.int64))
            part = gs.Variable(f"{name}/piece", dtype=np.uint8)
            graph.nodes.append(gs.Node("Reshape", name=f"{name}/Reshape",
                                       inputs=[codes, target], outputs=[part]))
            parts.append(part)
        graph.nodes.append(gs.Node("Concat", name=f"{self.x.name}/Concat", attrs={"axis": 2},
                                   inputs=parts, outputs=[self.x]))


def separate_codes(graph: gs.Graph, q_codes: gs.Tensor, k_codes: gs.Tensor, v_codes: gs.Tensor):
    """(SeparateCodes, its X) when q, kᵀ and v are quantized layouts of three projections, else
    None. The codes tensors are the DQ inputs of Q·Kᵀ's and P·V's operands."""
    found = [_operand(graph, t, role)
             for t, role in ((q_codes, "q"), (k_codes, "k"), (v_codes, "v"))]
    if any(f is None for f in found):
        return None
    dims = {f[2] for f in found}
    projections = {id(f[0]) for f in found}
    if len(dims) != 1 or len(projections) != 3:
        return None
    n, heads, dim = dims.pop()
    batch = (found[0][0].shape or [None])[0]
    x = gs.Variable(f"{found[0][1].name}/packed_qkv", dtype=np.uint8,
                    shape=[batch if batch is not None else "batch", n, 3, heads, dim])
    return SeparateCodes(x, [(f[0], f[1]) for f in found], n, heads, dim), x


def _operand(graph: gs.Graph, codes: gs.Tensor, role: str):
    """(P, its QuantizeLinear, (N, H, D)) for one operand's codes, or None."""
    q = producer(codes)
    if q is None or q.op != "QuantizeLinear" or len(codes.outputs) != 1 or len(q.inputs) < 3:
        return None
    if codes in graph.outputs or q.inputs[0] in graph.outputs:
        return None
    s, z = const_value(q.inputs[1]), const_value(q.inputs[2])
    if s is None or z is None or s.size != 1 or z.size != 1 or z.dtype != np.uint8:
        return None
    tr = producer(q.inputs[0])
    if tr is None or tr.op != "Transpose" or list(tr.attrs.get("perm", [])) != _PERMS[role] \
            or len(q.inputs[0].outputs) != 1:
        return None
    rs = producer(tr.inputs[0])
    if rs is None or rs.op != "Reshape" or len(tr.inputs[0].outputs) != 1 or \
            tr.inputs[0] in graph.outputs:
        return None
    dims = _dims(rs.outputs[0].shape, rs.inputs[0].shape)
    return None if dims is None else (rs.inputs[0], q, dims)


def _dims(shape, src) -> tuple[int, int, int] | None:
    """(N, H, D) of a Reshape [B, N, H·D] -> [B, N, H, D] from what the shapes hold statically
    (Hugging Face's view(B, -1, H, D) leaves H or N symbolic on one side or the other)."""
    if shape is None or src is None or len(shape) != 4 or len(src) != 3:
        return None
    n = next((d for d in (shape[1], src[1]) if isinstance(d, int)), None)
    width, dim = src[2], shape[3]
    if n is None or not isinstance(width, int) or not isinstance(dim, int) or width % dim:
        return None
    heads = width // dim
    if isinstance(shape[2], int) and shape[2] != heads:
        return None
    return n, heads, dim
