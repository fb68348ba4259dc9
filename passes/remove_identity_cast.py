"""Drop a Cast to the type its input already has (Hugging Face's eager attention, TorchScript).

    Softmax ─Cast(FLOAT)─Cast(FLOAT)─ MatMul      ->      Softmax ─ MatMul

`softmax(..., dtype=torch.float32).to(query.dtype)` exports as two float-to-float Casts between
the attention probabilities and P·V, where the recogniser, the probabilities' quantizer and the
fused attentions expect the Softmax output itself.

Matches: Cast(x, to) whose input's element type is known and equal to `to`.
Refuses: nothing: a Cast that converts, or of an unknown input type, is not this pattern.
Emits:   x, read by the Cast's readers (a Cast writing a graph output keeps it). Bit-exact: a
         Cast to the same type is the identity.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxvq.core.edit import bypass
from onnxvq.core.pipeline import PassContext, RewritePass


class RemoveIdentityCast(RewritePass):
    id = "remove-identity-cast"
    matches = "Cast(x, to) with x already of type `to`"
    emits = "x"
    anchor_ops = ("Cast",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> gs.Node | None:
        x, to = node.inputs[0], node.attrs.get("to")
        if x.dtype is None or to is None or node.outputs[0] in graph.outputs:
            return None
        try:
            same = np.dtype(x.dtype) == onnx.helper.tensor_dtype_to_np_dtype(int(to))
        except (TypeError, KeyError, ValueError):  # bfloat16 / float8: not a numpy dtype here
            return None
        return node if same else None

    def rewrite(self, graph: gs.Graph, m: gs.Node, ctx: PassContext) -> None:
        bypass(m, m.inputs[0], graph)
