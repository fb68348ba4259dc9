"""QuantizedLinear's code-writing forms split back into the two nodes they fused, for
`keep_quantized` (sensitivity, mixed precision): the restorer finds a Linear by the FP32 tensor
it writes, which a fused node never writes.

    QuantizedLinearQuantize(7 inputs, s, z)      -> QuantizedLinear -> QuantizeLinear(axis -1)
    QuantizedLinearGeluQuantize(.., bias, s, z)  -> QuantizedLinear(bias 0) -> GeluQuantizeLinear

The float tensor gets the name the canonical graph gives it (the Linear's bias Add output, or
for fc1, whose bias the GELU holds, the MatMul's); the split computes the same codes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxvq.plugins.ops import PLUGIN_ATTRS, all_function_protos

_OPS = ("QuantizedLinearQuantize", "QuantizedLinearGeluQuantize")
_NEEDED = ("QuantizedLinear", "GeluQuantizeLinear")


def split_linear_codes(model: onnx.ModelProto, canonical: onnx.ModelProto) -> onnx.ModelProto:
    """`model` (edited in place and returned) with each fused node whose Linear `canonical`
    names replaced by the unfused pair."""
    by_name = {n.name: n for n in canonical.graph.node}
    fused = [n for n in model.graph.node if n.op_type in _OPS and n.domain == "com.onnxvq"]
    inits = {t.name: t for t in model.graph.initializer}
    for node in fused:
        mm = by_name.get(node.name.rsplit("/", 1)[0])
        if mm is None:
            continue
        gelu = node.op_type == "QuantizedLinearGeluQuantize"
        name = mm.output[0] if gelu else _bias_output(canonical, mm.output[0])
        ins = list(node.input)
        lin_ins = ins[:7]
        if gelu:  # the Linear without the bias, the GELU with it (as fuse-gelu-quantize wrote)
            zero = f"{name}/zero_bias"
            n = numpy_helper.to_array(inits[ins[6]]).size
            model.graph.initializer.append(numpy_helper.from_array(np.zeros(n, np.float32), zero))
            lin_ins[6] = zero
        attrs = dict(PLUGIN_ATTRS)
        lin = helper.make_node("QuantizedLinear", lin_ins, [name],
                               name=f"{mm.name}/QuantizedLinear", domain="com.onnxvq", **attrs)
        quant = (helper.make_node("GeluQuantizeLinear", [name, ins[6], ins[7], ins[8]],
                                  list(node.output), name=f"{node.name}/gelu",
                                  domain="com.onnxvq", **attrs) if gelu else
                 helper.make_node("QuantizeLinear", [name, ins[7], ins[8]], list(node.output),
                                  name=f"{node.name}/quantize", axis=-1))
        at = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        model.graph.node.insert(at, quant)
        model.graph.node.insert(at, lin)
    have = {f.name for f in model.functions}
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if fused:
        model.functions.extend(f for f in all_function_protos(max(opset, 17))
                               if f.name in _NEEDED and f.name not in have)
    return model


def _bias_output(canonical: onnx.ModelProto, out: str) -> str:
    """The output of the bias Add reading the Linear's output `out`, or `out` itself."""
    inits = {t.name for t in canonical.graph.initializer}
    for n in canonical.graph.node:
        if n.op_type == "Add" and out in n.input and any(i in inits for i in n.input):
            return n.output[0]
    return out
