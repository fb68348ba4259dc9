"""Weight-only 4-bit Linears as ONNX Runtime's MatMulNBits (float activations, 4-bit weights).

    x (float) ───────────┐                      x ─┐
                         MatMul [─Add(bias)]  ->    MatMulNBits(x, B_packed, scales[, bias])
    W_q ─DQ(s_w, axis 1)─┘

MatMulNBits keeps the weight 4-bit in memory and dequantizes it inside the GEMM; with
`accuracy_level` 1 it computes in float32 with `(u - 8) * s` = `q * s` per weight, exactly the
DequantizeLinear output it replaces. Its scales are per block of `block_size` input rows: the
per-channel scale is repeated over the blocks, so the dequantized weight is unchanged.

Matches: MatMul(x, DQ(W_q)) with x not dequantized (weight-only mode), W_q a constant 2-D int8
         tensor with codes in [-8, 7], zero point 0, scale per tensor or per column (axis 1); an
         Add of a 1-D constant over the columns after it is taken in as the bias.
Refuses: a nonzero weight zero point, a per-row weight scale, a DQ read by another node too.
Emits:   com.microsoft MatMulNBits(bits=4, block_size, accuracy_level=1), B uint8
         [N, ceil(K / block), block / 2] (low nibble first), scales float32 [N * blocks].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import const_value, producer
from onnxvq.passes.ort_domain import MS_DOMAIN, import_ms_domain, rewire

ACCURACY = 1  # float32 compute: the exact DQ weights (4 quantizes x to int8 per block)


@dataclass
class _WeightOnly:
    matmul: gs.Node
    dq: gs.Node
    codes: np.ndarray  # [K, N] int8
    add: gs.Node | None
    bias: np.ndarray | None


def block_size(k: int) -> int:
    """128 rows a block (a power of two >= 16, as MatMulNBits requires), fewer for small K."""
    return int(min(128, max(16, 1 << (k - 1).bit_length())))


def pack_nbits(codes: np.ndarray, block: int) -> np.ndarray:
    """int4 codes [K, N] -> MatMulNBits' B [N, blocks, block / 2]: u = q + 8, two a byte."""
    k, n = codes.shape
    blocks = -(-k // block)
    u = np.full((n, blocks * block), 8, np.uint8)  # padding rows dequantize to 0
    u[:, :k] = (codes.T.astype(np.int16) + 8).astype(np.uint8)
    u = u.reshape(n, blocks, block)
    return (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)


class OrtMatMulNBits(RewritePass):
    id = "ort-matmul-nbits"
    matches = "MatMul(x float, DQ(W_q 4-bit codes, s_w per column)) [+ bias]"
    emits = "com.microsoft MatMulNBits(bits=4, accuracy_level=1)"
    anchor_ops = ("MatMul",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _WeightOnly | None:
        x, dq = producer(node.inputs[0]), producer(node.inputs[1])
        if (x is not None and x.op == "DequantizeLinear") or dq is None \
                or dq.op != "DequantizeLinear":
            return None
        w = const_value(dq.inputs[0])
        if w is None or w.dtype != np.int8 or w.ndim != 2 or w.min() < -8 or w.max() > 7:
            return None
        out = node.outputs[0]
        add = out.outputs[0] if len(out.outputs) == 1 and out not in graph.outputs else None
        bias = None
        if add is not None and add.op == "Add" and add.inputs[0] is out:
            bias = const_value(add.inputs[1])
        if bias is None or bias.ndim != 1 or bias.shape[0] != w.shape[1]:
            add, bias = None, None
        return _WeightOnly(node, dq, w, add, bias)

    def check(self, graph: gs.Graph, m: _WeightOnly) -> str | None:
        zp = const_value(m.dq.inputs[2]) if len(m.dq.inputs) > 2 else np.zeros(1)
        if zp is None or np.any(zp != 0):
            return "weight zero point is not 0"
        s = const_value(m.dq.inputs[1])
        if s is None or (s.size > 1 and m.dq.attrs.get("axis", 1) not in (1, -1)):
            return "weight scale is not per column"
        if len(m.dq.outputs[0].outputs) != 1:
            return "the weight DQ is read elsewhere too"
        return None

    def rewrite(self, graph: gs.Graph, m: _WeightOnly, ctx: PassContext) -> None:
        import_ms_domain(graph)
        k, n = m.codes.shape
        block = block_size(k)
        blocks = -(-k // block)
        scale = np.broadcast_to(const_value(m.dq.inputs[1]).astype(np.float32).ravel(), (n,))
        name = m.matmul.name
        inputs = [m.matmul.inputs[0], gs.Constant(f"{name}/B4", pack_nbits(m.codes, block)),
                  gs.Constant(f"{name}/scales", np.repeat(scale, blocks).astype(np.float32))]
        last = m.add if m.add is not None else m.matmul
        if m.bias is not None:  # inputs 3, 4 (zero points, g_idx) absent
            empty = gs.Variable.empty()
            inputs += [empty, empty, gs.Constant(f"{name}/bias", m.bias.astype(np.float32))]
        out = last.outputs[0]
        y = gs.Variable(f"{name}/nbits", dtype=np.float32, shape=out.shape)
        graph.nodes.append(gs.Node(
            "MatMulNBits", name=f"{name}/MatMulNBits", domain=MS_DOMAIN, inputs=inputs,
            outputs=[y], attrs={"K": k, "N": n, "bits": 4, "block_size": block,
                                "accuracy_level": ACCURACY}))
        rewire(out, y, graph)
        last.outputs.clear()
