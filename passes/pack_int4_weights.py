"""Store weight codes that fit in 4 bits as INT4 initializers, so a W4 file is ~8x smaller.

    W_q (int8 constant, codes in [-8, 7]) ─DQ/MatMulIntegerToFloat
        ->  W4 (INT4 initializer, two codes a byte) ─Cast(to=int8)─DQ/MatMulIntegerToFloat

The Cast is exact (every int4 value is an int8 value) and has constant input, so ONNX Runtime folds
it into an int8 initializer when the session is built: the int8 kernels and ORT's QDQ fusions see
the same tensor as before and run at the W8 speed. (A DequantizeLinear reading INT4 directly is
valid ONNX but ORT 1.32 CPU then fuses nothing: measured 2.1x slower than W8/A8 on ViT-S, README
"Low bits"; MatMulNBits with activation Q/DQ in front 1.9x.)

INT4 needs opset 21 and IR 10, so the model's default-domain opset is raised to 21. The ops whose
meaning changed between the model's opset and 21 are rewritten to their opset-21 form: Reduce*
with an `axes` attribute (an input from opset 18) and Split without `split` (needs `num_outputs`
from 18). onnxvq's local functions are restamped at opset 21 (their bodies depend on the opset).

Matches: int8 constants of >= 16 values, every value in [-8, 7], read as weight codes (input 0 of
         DequantizeLinear, input 1 of MatMulIntegerToFloat/MatMulInteger/ConvInteger/
         QuantizedLinear and its code-writing forms).
Refuses: target trt (TensorRT's parser takes INT4 only as a block-quantized DequantizeLinear
         input); a graph with an op whose meaning changes at opset 21 that this pass does not
         rewrite (GridSample, whose modes were renamed at 20), or a model-local function of
         another domain (its body would keep the old opset).
Emits:   INT4 initializer + Cast(to=INT8) per weight; the opset raised to 21.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper
from onnx_graphsurgeon.importers.onnx_importer import OnnxImporter

from onnxvq.core.pipeline import Pass, PassContext, PassResult
from onnxvq.plugins.functions import DOMAIN
from onnxvq.plugins.ops import all_function_protos, has_attention_bias

INT4_OPSET = 21
_READERS = {("DequantizeLinear", 0), ("MatMulIntegerToFloat", 1), ("MatMulInteger", 1),
            ("ConvInteger", 1), ("QuantizedLinear", 1), ("QuantizedLinearQuantize", 1),
            ("QuantizedLinearGeluQuantize", 1)}
_REDUCE_AXES_ATTR = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                     "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
_CHANGED = ("GridSample",)  # opset 20 renamed its modes (bilinear -> linear, bicubic -> cubic)
_MIN_VALUES = 16  # smaller codes (zero points) are not worth a Cast


def packable(t: gs.Tensor) -> bool:
    """An int8 constant whose codes all fit in int4, read only as weight codes."""
    if not isinstance(t, gs.Constant) or t.dtype != np.int8 or int(np.prod(t.shape)) < _MIN_VALUES:
        return False
    if not t.outputs or any((n.op, n.inputs.index(t)) not in _READERS for n in t.outputs):
        return False
    v = np.asarray(t.values)
    return bool(v.min() >= -8 and v.max() <= 7)


def refuse(graph: gs.Graph, target: str | None) -> str | None:
    """Why the weights keep their int8 containers (None: they can be packed)."""
    if target == "trt":
        return "target trt: TensorRT reads INT4 only as a block-quantized DequantizeLinear input"
    changed = sorted({n.op for n in graph.nodes if n.op in _CHANGED})
    if changed and graph.opset < INT4_OPSET:
        return f"{changed[0]} changes meaning at opset 20/21"
    foreign = sorted({f.domain for f in graph.functions if f.domain != DOMAIN})
    if foreign and graph.opset < INT4_OPSET:
        return f"local functions of domain {foreign[0]!r} would keep opset {graph.opset}"
    return None


class PackInt4Weights(Pass):
    id = "pack-int4-weights"
    matches = "int8 weight-code constants with every code in [-8, 7]"
    emits = "INT4 initializer + Cast(to=int8); default-domain opset 21"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult(self.id)
        tensors = [t for t in graph.tensors().values() if packable(t)]
        if not tensors:
            return result
        reason = refuse(graph, ctx.config.target if ctx.config is not None else None)
        if reason is not None:
            result.refuse(tensors[0].name, reason)
            return result
        raise_opset(graph, INT4_OPSET)
        for t in tensors:
            packed = gs.Constant(f"{t.name}/int4", _int4_values(t))
            out = gs.Variable(f"{t.name}/int8", dtype=np.int8, shape=t.shape)
            graph.nodes.append(gs.Node("Cast", f"{t.name}/Cast", {"to": onnx.TensorProto.INT8},
                                       [packed], [out]))
            for node in list(t.outputs):
                node.inputs[node.inputs.index(t)] = out
            result.count("bytes_saved", int(np.prod(t.shape)) // 2)
            result.applied += 1
        graph.cleanup().toposort()
        return result


def _int4_values(t: gs.Constant) -> gs.ir.tensor.LazyValues:
    """The codes as a packed INT4 TensorProto (graphsurgeon exports it as it is)."""
    proto = numpy_helper.from_array(np.asarray(t.values).astype(ml_dtypes.int4), f"{t.name}/int4")
    return gs.ir.tensor.LazyValues(proto)


def raise_opset(graph: gs.Graph, opset: int) -> None:
    """Raise the default-domain opset to `opset`, rewriting the ops whose form changed."""
    if graph.opset >= opset:
        return
    old = graph.opset
    for node in list(graph.nodes):
        if old < 18 and node.op in _REDUCE_AXES_ATTR and "axes" in node.attrs:
            axes = np.asarray(node.attrs.pop("axes"), dtype=np.int64)
            node.inputs.insert(1, gs.Constant(f"{node.name}/axes", axes))
        if old < 18 and node.op == "Split" and len(node.inputs) < 2:
            node.attrs["num_outputs"] = len(node.outputs)
    graph.opset = opset
    # new protos: the imported ones are the input model's own (editing them would edit it)
    graph.import_domains = [helper.make_opsetid(i.domain, opset if i.domain in ("", "ai.onnx")
                                                else i.version) for i in graph.import_domains or []]
    ours = [f for f in graph.functions if f.domain == DOMAIN]
    if ours:  # the bodies are written per opset (plugins/functions.py)
        names = {f.name for f in ours}
        graph.functions = [f for f in graph.functions if f.domain != DOMAIN] + [
            OnnxImporter.import_function(p, model_opset=opset)
            for p in all_function_protos(opset, has_attention_bias(ours)) if p.name in names]
