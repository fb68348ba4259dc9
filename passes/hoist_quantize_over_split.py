"""Quantize once before a Split (the packed-QKV head split) instead of once per piece after it.

    X ─Transpose─Split─┬─Squeeze────────────Q(s_q)            X ─Q(axis, [s_q,s_k,s_v])─Transpose
                       ├─Squeeze─Transpose──Q(s_k)     ->       ─Split─┬─Squeeze──────────  (uint8)
                       └─Squeeze────────────Q(s_v)                     ├─Squeeze─Transpose─
                                                                       └─Squeeze──────────

Matches: Split(X, axis a), or X read only by Gathers of constant scalar indices on one axis a
         (`qkv[0], qkv[1], qkv[2]`), whose every piece reaches exactly one set of identical
         per-tensor QuantizeLinears through single-reader layout ops (Squeeze, Unsqueeze,
         Transpose, Reshape), with static piece sizes; X optionally the output of a Transpose read
         only by the slicers (the Q then goes above it, on axis perm[a]).
Refuses: a piece read in float, per-axis or differing-type quantizers, unknown piece sizes.
Emits:   one QuantizeLinear on the Split's (or Transpose's) input with per-axis scale and zero
         point (each piece's own, repeated over its size; per-tensor when all agree), the layout
         ops on the 8-bit codes. Bit-exact: quantization is elementwise and the pieces are
         disjoint slices along `a`. ONNX Runtime's float Split over the [B,N,3,H,D] QKV tensor
         is slow; on uint8 it moves a quarter of the bytes, and 3 quantizers become 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import PassContext, RewritePass
from onnxvq.core.walk import const_value, producer

_LAYOUT = ("Squeeze", "Unsqueeze", "Transpose", "Reshape")


@dataclass
class _Pieces:
    split: gs.Node  # the Split, or the first of the Gathers
    slicers: list[gs.Node]  # the Split alone, or every Gather reading X
    chains: list[list[gs.Tensor]]  # per output: the tensors from the Split output to the Q input
    quants: list[list[gs.Node]]  # per output: the QuantizeLinears reading the chain's end
    above: gs.Node | None  # the Transpose producing the Split's input, if the Q goes above it


class HoistQuantizeOverSplit(RewritePass):
    id = "hoist-quantize-over-split"
    matches = "Split whose pieces are each quantized after layout-only ops"
    emits = "one per-axis QuantizeLinear before the Split; layout ops on codes"
    anchor_ops = ("Split", "Gather")

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _Pieces | None:
        slicers = [node]
        if node.op == "Gather":
            slicers = list(node.inputs[0].outputs)
            if slicers[0] is not node or _gather_indices(slicers) is None:
                return None  # matched once, from the first Gather
            dim = node.inputs[0].shape[node.attrs.get("axis", 0)] if node.inputs[0].shape else None
            if dim != len(slicers):
                return None  # not a split into pieces (e.g. the class token x[:, 0])
        chains, quants = [], []
        for out in (o for s in slicers for o in s.outputs):
            chain = [out]
            while len(chain[-1].outputs) == 1 and chain[-1].outputs[0].op in _LAYOUT:
                chain.append(chain[-1].outputs[0].outputs[0])
            readers = list(chain[-1].outputs)
            if not readers or any(r.op != "QuantizeLinear" for r in readers):
                return None
            chains.append(chain)
            quants.append(readers)
        t = producer(node.inputs[0])
        above = t if t is not None and t.op == "Transpose" and len(node.inputs[0].outputs) == \
            len(slicers) else None
        return _Pieces(node, slicers, chains, quants, above)

    def check(self, graph: gs.Graph, m: _Pieces) -> str | None:
        params = [self._params(qs) for qs in m.quants]
        if any(p is None for p in params):
            return "pieces quantized with per-axis, differing or non-constant parameters"
        if len({p[1].dtype for p in params}) != 1:
            return "pieces quantized to different integer types"
        if self._sizes(m) is None:
            return "piece sizes along the split axis are not static"
        if any(t in graph.outputs for c in m.chains for t in c):
            return "a piece is a graph output"
        return None

    @staticmethod
    def _params(qs: list[gs.Node]):
        vals = [(const_value(q.inputs[1]), const_value(q.inputs[2]) if len(q.inputs) > 2 else None)
                for q in qs]
        s, z = vals[0]
        if s is None or z is None or s.size != 1 or z.size != 1:
            return None
        if any(not (np.array_equal(a, s) and np.array_equal(b, z)) for a, b in vals[1:]):
            return None
        return s.reshape(()), z.reshape(())

    @staticmethod
    def _sizes(m: _Pieces) -> list[int] | None:
        """Per piece, how many positions along the axis it covers (Gather: one each, in index
        order; positions no Gather reads get the first piece's parameters, and are never read)."""
        split = m.split
        if split.op == "Gather":
            shape, axis = split.inputs[0].shape, split.attrs.get("axis", 0)
            if shape is None or not isinstance(shape[axis], int):
                return None
            return [1] * len(m.slicers) if len(m.slicers) == shape[axis] else None
        if len(split.inputs) > 1:
            v = const_value(split.inputs[1])
            return None if v is None else [int(x) for x in v.reshape(-1)]
        if "split" in split.attrs:
            return [int(x) for x in split.attrs["split"]]
        shape, axis = split.inputs[0].shape, split.attrs.get("axis", 0)
        n = len(split.outputs)
        if shape is None or not isinstance(shape[axis], int) or shape[axis] % n:
            return None
        return [shape[axis] // n] * n

    def rewrite(self, graph: gs.Graph, m: _Pieces, ctx: PassContext) -> None:
        params = [self._params(qs) for qs in m.quants]
        sizes = self._sizes(m)
        axis = m.split.attrs.get("axis", 0)
        src = m.split.inputs[0]
        if m.above is not None:
            axis = list(m.above.attrs["perm"])[axis] if "perm" in m.above.attrs else axis
            src = m.above.inputs[0]
        if m.split.op == "Gather":  # order the pieces by their index
            order = np.argsort(_gather_indices(m.slicers))
            params = [params[i] for i in order]
        scale = np.repeat([p[0] for p in params], sizes).astype(np.float32)
        zp = np.repeat([p[1] for p in params], sizes).astype(params[0][1].dtype)
        per_tensor = np.all(scale == scale[0]) and np.all(zp == zp[0])
        q_out = gs.Variable(f"{m.split.name}/codes", dtype=zp.dtype)
        attrs = {} if per_tensor else {"axis": int(axis)}
        graph.nodes.append(gs.Node(
            "QuantizeLinear", name=f"{m.split.name}/QuantizeLinear", attrs=attrs, outputs=[q_out],
            inputs=[src, gs.Constant(f"{m.split.name}/scale", scale[:1].reshape(()) if per_tensor
                                     else scale),
                    gs.Constant(f"{m.split.name}/zero_point", zp[:1].reshape(()) if per_tensor
                                else zp)]))
        for reader in [m.above] if m.above is not None else m.slicers:
            reader.inputs[0] = q_out
        # The layout ops now carry codes: new tensor and node names, so no FP32 name changes
        # its type (sensitivity's keep_quantized restores FP32 nodes by those names).
        moved = [t for c in m.chains for t in c] + ([m.above.outputs[0]] if m.above else [])
        for t in moved:
            t.dtype, t.name = zp.dtype, f"{t.name}/codes"
            for n in t.inputs:
                n.name = n.name if n.name.endswith("/codes") else f"{n.name}/codes"
        for chain, qs in zip(m.chains, m.quants, strict=True):
            for q in qs:
                for c in list(q.outputs[0].outputs):
                    for i, t in enumerate(c.inputs):
                        if t is q.outputs[0]:
                            c.inputs[i] = chain[-1]
                q.outputs.clear()


def _gather_indices(gathers: list[gs.Node]) -> list[int] | None:
    """The scalar constant indices of Gathers on one axis, when they are distinct."""
    if any(g.op != "Gather" for g in gathers):
        return None
    if len({g.attrs.get("axis", 0) for g in gathers}) != 1:
        return None
    idx = [const_value(g.inputs[1]) for g in gathers]
    if any(i is None or i.ndim != 0 for i in idx):
        return None
    dim = gathers[0].inputs[0].shape
    axis = gathers[0].attrs.get("axis", 0)
    values = [int(i) % dim[axis] if dim is not None and isinstance(dim[axis], int) else int(i)
              for i in idx]
    return values if len(set(values)) == len(values) and min(values) >= 0 else None
