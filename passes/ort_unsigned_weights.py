"""Store the int8 weights of ONNX Runtime's own int8 kernels as uint8 W+128 with zero point 128,
where the CPU lacks VNNI and AMX: the same real values, computed exactly.

Without VNNI (AVX-512 VNNI or AVX-VNNI) or AMX, MLAS runs uint8 x int8 GEMMs (QLinearConv,
QGemm, QLinearMatMul, MatMulIntegerToFloat, MatMulInteger) on `vpmaddubsw`, which adds each pair
of u8·s8 products into a *saturating* int16: a pair whose |sum| exceeds 32767 (a = 255 with
|w0| + |w1| >= 129) is clipped (measured on a Zen 3: QLinearConv codes off by up to 38, a tiny
ViT at 10.7 instead of 17.5 dB). Its uint8 x uint8 kernel widens to int16 before multiplying and
is exact, 1.2-1.35x the U8S8 time (README "Exact int8 on AVX2 CPUs").

    W_q (int8, z_w = 0) ─DQ─> Conv/Gemm/MatMul      ->  W_q + 128 (uint8, z_w = 128) ─DQ─> ...
    MatMulIntegerToFloat / QGemm / MatMulInteger(..., W_q int8, z_w = 0, ...)
                                                    ->  the same node on W_q + 128, z_w = 128

Matches: a DequantizeLinear of a constant int8 tensor whose every reader is a Conv, Gemm or
         MatMul (the ops ORT's QDQ fusion makes int8 kernels of), and com.microsoft
         MatMulIntegerToFloat / QGemm and MatMulInteger nodes with a constant int8 B; when
         QuantConfig.ort_weights is "uint8", or "auto" (the default) and this machine has
         neither AVX-512 VNNI, AVX-VNNI nor AMX-INT8 (`unsigned_weights_enabled`).
Refuses: a zero point that is not 0 (not symmetric) or not constant, a block-quantized DQ, a
         weight whose codes cannot saturate (every |w| <= 64: no pair sum reaches 32767, and
         4-bit codes stay int8 for pack-int4-weights), an activation operand that is not uint8
         (MLAS has no int8 x uint8 kernel: ORT would leave the op float), a reader that does not
         take the DQ as its weight operand.
Emits:   the same node on a uint8 constant W_q + 128 and a uint8 zero point 128 of the old zero
         point's shape (per-tensor or per-channel, the same axis): (W_q + 128) - 128 = W_q, so
         the dequantized values and the int32 sums are unchanged.
Not for com.onnxvq QuantizedLinear* (its kernels take int8 codes with zero point 0), target trt
(symmetric int8) or QLinearAttention / LogIntAttention (onnxvq's own exact kernels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import const_value, producer
from onnxvq.passes.ort_domain import MS_DOMAIN
from onnxvq.plugins.native import mlas_int8_exact

SHIFT = 128
# The largest |code| with which no pair of uint8 x int8 products leaves int16:
# 2 * 64 * 255 = 32640 <= 32767.
SAFE_CODE = 64
# The readers ORT's QDQ fusion turns into U8S8 kernels, and their weight operand.
_DQ_READERS = {"Conv": 1, "Gemm": 1, "MatMul": 1}
# Integer nodes written directly: (domain, op) -> (activation zp, weight, weight zp) input indices.
_INTEGER_NODES = {(MS_DOMAIN, "MatMulIntegerToFloat"): (4, 1, 5),
                  (MS_DOMAIN, "QGemm"): (2, 3, 5),
                  ("", "MatMulInteger"): (2, 1, 3)}


def unsigned_weights_enabled(ctx: PassContext) -> bool:
    """QuantConfig.ort_weights: "uint8", or "auto" where MLAS's U8S8 kernels saturate (no
    AVX-512 VNNI, no AVX-VNNI, no AMX-INT8: MLAS then falls to vpmaddubsw)."""
    mode = ctx.config.ort_weights if ctx.config is not None else "auto"
    return mode == "uint8" or (mode == "auto" and not mlas_int8_exact())


@dataclass
class _Weight:
    node: gs.Node  # the DequantizeLinear, or the integer node
    w: int  # input index of the int8 codes
    zp: int  # input index of their zero point (may be past the inputs: absent)
    activations: list[str]  # the other operand's type per reader (`_dq_activation`)


class OrtUnsignedWeights(RewritePass):
    id = "ort-unsigned-weights"
    matches = ("DQ(int8 W)->Conv/Gemm/MatMul; MatMulIntegerToFloat/QGemm/MatMulInteger on int8 "
               "W; zero point 0")
    emits = "uint8 W+128 with zero point 128 (MLAS's exact U8U8 kernels)"
    anchor_ops = ("DequantizeLinear", "MatMulIntegerToFloat", "QGemm", "MatMulInteger")

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _Weight | None:
        if not unsigned_weights_enabled(ctx):
            return None
        if node.op == "DequantizeLinear":
            if not _is_int8_const(node.inputs[0]):
                return None
            readers = list(node.outputs[0].outputs)
            if not readers or node.outputs[0] in graph.outputs or \
                    any(r.op not in _DQ_READERS for r in readers):
                return None
            kinds = [_dq_activation(r, node) for r in readers]
            if all(k == "float" for k in kinds):  # no integer kernel reads these codes
                return None
            return _Weight(node, 0, 2, kinds)
        key = (node.domain or "", node.op)
        if key not in _INTEGER_NODES:
            return None
        za, w, zw = _INTEGER_NODES[key]
        if len(node.inputs) <= w or not _is_int8_const(node.inputs[w]):
            return None
        a = node.inputs[0]
        zpa = node.inputs[za] if len(node.inputs) > za else None
        return _Weight(node, w, zw, [_code_type(zpa, a)])

    def check(self, graph: gs.Graph, m: _Weight) -> str | None:
        node = m.node
        if node.op == "DequantizeLinear" and node.attrs.get("block_size", 0):
            return "block-quantized weight"
        if len(node.inputs) > m.zp and node.inputs[m.zp] is not None and \
                node.inputs[m.zp].name:
            zp = const_value(node.inputs[m.zp])
            if zp is None:
                return "weight zero point is not constant"
            if np.any(zp != 0):
                return "weight zero point is not 0"
        codes = const_value(node.inputs[m.w])
        if np.abs(codes.astype(np.int16)).max(initial=0) <= SAFE_CODE:
            return f"every |code| <= {SAFE_CODE}: the int16 pair sums cannot saturate"
        if "weight?" in m.activations:
            return "a reader does not take the DequantizeLinear as its weight"
        if any(a not in ("uint8", "float") for a in m.activations):
            return "activation operand is not uint8"
        return None

    def rewrite(self, graph: gs.Graph, m: _Weight, ctx: PassContext) -> None:
        node = m.node
        old = node.inputs[m.w]
        codes = const_value(old).astype(np.int16) + SHIFT
        node.inputs[m.w] = gs.Constant(f"{old.name}/uint8", codes.astype(np.uint8))
        if len(node.inputs) > m.zp and node.inputs[m.zp] is not None and node.inputs[m.zp].name:
            shape = np.shape(const_value(node.inputs[m.zp]))
        else:  # absent: DQ's scale shape (per-tensor or per-axis)
            scale = const_value(node.inputs[1]) if node.op == "DequantizeLinear" else None
            shape = np.shape(scale) if scale is not None else ()
        zp = gs.Constant(f"{node.name}/w_zero_point_u8", np.full(shape, SHIFT, np.uint8))
        while len(node.inputs) <= m.zp:
            node.inputs.append(gs.Variable.empty())
        node.inputs[m.zp] = zp


def _is_int8_const(t: gs.Tensor) -> bool:
    v = const_value(t)
    return v is not None and v.dtype == np.int8


def _dq_activation(reader: gs.Node, dq: gs.Node) -> str:
    """How a Conv/Gemm/MatMul reading `dq` takes its other operand: "uint8" / "int8" (a DQ of
    such codes: ORT fuses an integer kernel), "float" (no DQ: ORT leaves the op float, which
    reads the same values), or "weight?" when it does not read `dq` as its weight."""
    w = _DQ_READERS[reader.op]
    ins = reader.inputs
    if len(ins) <= w or ins[w] is not dq.outputs[0] or ins[0] is dq.outputs[0]:
        return "weight?"
    dx = producer(ins[0])
    if dx is None or dx.op != "DequantizeLinear":
        return "float"
    return _code_type(dx.inputs[2] if len(dx.inputs) > 2 else None, dx.inputs[0])


def _code_type(zp: gs.Tensor | None, codes: gs.Tensor) -> str:
    """The integer type of an activation operand: its zero point's, else its own."""
    for t in (zp, codes):
        if t is None or not t.name:
            continue
        v = const_value(t)
        dtype = v.dtype if v is not None else t.dtype
        if dtype is not None:
            return np.dtype(dtype).name
    return "unknown"
