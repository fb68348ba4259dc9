"""onnxvq as a Polygraphy extension: plain `polygraphy run` on an onnxvq model.

Registered on Polygraphy's `polygraphy.run.plugins` entry point (pyproject.toml), so
`polygraphy run` calls `get_arg_groups()` while it builds its options. That:

- makes the ONNX Runtime sessions Polygraphy creates (`--onnxrt`) register onnxvq's native
  custom-op library (when built and not disabled by ONNXVQ_NO_NATIVE) and flush denormals, as
  onnxvq's own sessions do, so IntLayerNorm/LogIntSoftmax/LogIntMatMul run as kernels instead of
  their ONNX local functions;
- registers the numpy references of the three custom ops with Polygraphy's `--pluginref` runner,
  and a per-node fallback for every standard ONNX op (onnx's ReferenceEvaluator on that one node),
  so `--pluginref` executes a whole quantized model.

It adds no command-line options (an empty list of argument groups).
"""

from __future__ import annotations

import logging
from functools import cache

import numpy as np
import onnx
from onnx import helper

log = logging.getLogger(__name__)

_OPSETS = range(21, 12, -1)  # newest first: a node takes the newest schema its form fits


def get_arg_groups() -> list:
    """The entry point Polygraphy calls: install the hooks, add no options."""
    patch_onnxrt_sessions()
    register_references()
    return []


def patch_onnxrt_sessions() -> None:
    """Polygraphy's SessionFromOnnx builds `onnxruntime.SessionOptions()` itself; hand its loader
    an onnxruntime whose SessionOptions come with onnxvq's library and settings."""
    from polygraphy.backend.onnxrt import loader

    if not isinstance(loader.onnxrt, _OnnxvqOrt):
        loader.onnxrt = _OnnxvqOrt()


class _OnnxvqOrt:
    """onnxruntime, except that SessionOptions() is onnxvq's (`core.runtime.session_options`)."""

    def __getattr__(self, name: str):
        import onnxruntime

        return getattr(onnxruntime, name)

    @staticmethod
    def SessionOptions():  # noqa: N802  (the onnxruntime name it stands in for)
        from onnxvq.core.runtime import session_options

        return session_options()


def register_references() -> None:
    """Custom ops by their numpy reference, every other default-domain op by the fallback."""
    from polygraphy.backend.pluginref.references import OP_REGISTRY

    OP_REGISTRY.update({"IntLayerNorm": _int_layer_norm, "LogIntSoftmax": _log_int_softmax,
                        "LogIntMatMul": _log_int_matmul, "QLinearAttention": _qlinear_attention,
                        "LogIntAttention": _log_int_attention,
                        # the com.microsoft ops onnxvq's ORT lowering emits (target ort)
                        "MatMulIntegerToFloat": _matmul_integer_to_float,
                        "FastGelu": _fast_gelu})
    OP_REGISTRY.update({"GeluQuantizeLinear": _gelu_quantize_linear,
                        "AddLayerNormQuantize": _add_layer_norm_quantize,
                        "AddMulQuantizeLinear": _add_mul_quantize_linear,
                        "QuantizedLinear": _quantized_linear,
                        "AddIntLayerNorm": _add_int_layer_norm,
                        "QuantizedLinearQuantize": _quantized_linear_quantize,
                        "QuantizedLinearGeluQuantize": _quantized_linear_gelu_quantize})
    for schema in onnx.defs.get_all_schemas():
        if schema.domain in ("", "ai.onnx") and schema.name not in OP_REGISTRY:
            OP_REGISTRY[schema.name] = _standard_op


def _inputs(node, tensors: dict) -> list:
    from onnx_graphsurgeon import Constant

    return [None if t.is_empty() else t.values if isinstance(t, Constant) else tensors[t.name]
            for t in node.inputs]


def _ints(node, *names: str) -> dict[str, int]:
    return {n: int(node.attrs[n]) for n in names if n in node.attrs}


def _int_layer_norm(node, tensors: dict) -> dict:
    from onnxvq.plugins.reference import int_layer_norm

    x, alpha, gamma, beta = _inputs(node, tensors)
    y = int_layer_norm(x, alpha, gamma, beta, **_ints(node, "zero_point", "epsilon",
                                                      "gamma_shift", "output_dtype"))
    return {node.outputs[0].name: y}


def _log_int_softmax(node, tensors: dict) -> dict:
    from onnxvq.plugins.reference import log_int_softmax

    (x,) = _inputs(node, tensors)
    return {node.outputs[0].name: log_int_softmax(x, **_ints(node, "x0", "b", "c", "n", "bits",
                                                                 "octave_steps"))}


def _log_int_matmul(node, tensors: dict) -> dict:
    from onnxvq.plugins.reference import log_int_matmul

    a, v = _inputs(node, tensors)
    return {node.outputs[0].name: log_int_matmul(a, v, **_ints(node, "bits", "zero_point",
                                                                 "octave_steps"))}


def _qlinear_attention(node, tensors: dict) -> dict:
    from onnxvq.plugins.reference.attention import qlinear_attention

    (x,) = _inputs(node, tensors)
    attrs = {k: v for k, v in node.attrs.items() if k not in ("plugin_version", "plugin_namespace")}
    if "bias" in attrs:  # a tensor attribute: gs imports it as a Constant
        attrs["bias"] = np.asarray(getattr(attrs["bias"], "values", attrs["bias"]))
    return {node.outputs[0].name: qlinear_attention(x, **attrs)}


def _log_int_attention(node, tensors: dict) -> dict:
    from onnxvq.plugins.reference.attention import log_int_attention

    (x,) = _inputs(node, tensors)
    attrs = {k: v for k, v in node.attrs.items() if k not in ("plugin_version", "plugin_namespace")}
    return {node.outputs[0].name: log_int_attention(x, **attrs)}


def _matmul_integer_to_float(node, tensors: dict) -> dict:
    """ORT's contrib op: (A - a_zp)(B - b_zp)·a_scale·b_scale + bias, sums exact in int64."""
    a, b, sa, sb, *rest = _inputs(node, tensors) + [None] * 3
    za, zb, bias = rest[:3]
    acc = np.matmul(a.astype(np.int64) - (0 if za is None else np.asarray(za, np.int64)),
                    b.astype(np.int64) - (0 if zb is None else np.asarray(zb, np.int64)))
    y = acc.astype(np.float32) * (np.asarray(sa, np.float32) * np.asarray(sb, np.float32))
    if bias is not None:
        y = y + np.asarray(bias, np.float32)
    return {node.outputs[0].name: y.astype(np.float32)}


def _quantized_linear(node, tensors: dict) -> dict:
    from onnxvq.plugins.reference.linear import quantized_linear

    return {node.outputs[0].name: quantized_linear(*_inputs(node, tensors))}


def _quantized_linear_quantize(node, tensors: dict) -> dict:
    from onnxvq.plugins.reference.linear import quantized_linear_quantize

    return {node.outputs[0].name: quantized_linear_quantize(*_inputs(node, tensors))}


def _quantized_linear_gelu_quantize(node, tensors: dict) -> dict:
    from onnxvq.plugins.reference.linear import quantized_linear_gelu_quantize

    return {node.outputs[0].name: quantized_linear_gelu_quantize(*_inputs(node, tensors))}


def _fast_gelu(node, tensors: dict) -> dict:
    """ORT's contrib op: the tanh GELU of x (+ bias)."""
    x, *rest = _inputs(node, tensors)
    if rest and rest[0] is not None:
        x = x + rest[0]
    x = x.astype(np.float32)
    y = 0.5 * x * (1.0 + np.tanh(np.float32(0.7978845608) * (x + np.float32(0.044715) * x**3)))
    return {node.outputs[0].name: y.astype(np.float32)}


def _gelu_quantize_linear(node, tensors: dict) -> dict:
    from onnxvq.plugins.reference.fused import gelu_quantize_linear

    x, bias, scale, zp = _inputs(node, tensors)
    return {node.outputs[0].name: gelu_quantize_linear(x, bias, float(scale), zp)}


def _add_layer_norm_quantize(node, tensors: dict) -> dict:
    from onnxvq.plugins.reference.fused import add_layer_norm_quantize

    a, b, gamma, beta, scale, zp = _inputs(node, tensors)
    y, s = add_layer_norm_quantize(a, b, gamma, beta, float(scale), zp,
                                   float(node.attrs.get("epsilon", 1e-5)))
    return {node.outputs[0].name: y, node.outputs[1].name: s}


def _add_mul_quantize_linear(node, tensors: dict) -> dict:
    from onnxvq.plugins.reference.fused import add_mul_quantize_linear

    a, b, m, scale, zp = _inputs(node, tensors)
    y, s = add_mul_quantize_linear(a, b, m, float(scale), zp)
    return {node.outputs[0].name: y, node.outputs[1].name: s}


def _add_int_layer_norm(node, tensors: dict) -> dict:
    from onnxvq.plugins.reference.fused import add_int_layer_norm

    a, b, m, scale, zp, alpha, gamma, beta = _inputs(node, tensors)
    y, s = add_int_layer_norm(a, b, m, float(scale), zp, alpha, gamma, beta,
                              **_ints(node, "zero_point", "epsilon", "gamma_shift",
                                      "output_dtype"))
    return {node.outputs[0].name: y, node.outputs[1].name: s}


def _standard_op(node, tensors: dict) -> dict:
    """One standard node through onnx's ReferenceEvaluator (built once per node)."""
    evaluator, names = _evaluator(node)
    feeds = {n: np.asarray(v) for n, v in zip(names, _inputs(node, tensors), strict=True)
             if n}
    outs = evaluator.run(None, feeds)
    return {t.name: o for t, o in zip(node.outputs, outs, strict=False) if not t.is_empty()}


_EVALUATORS: dict[int, tuple] = {}


def _evaluator(node):
    key = id(node)
    found = _EVALUATORS.get(key)
    if found is not None and found[0] is node:
        return found[1], found[2]
    from onnx.reference import ReferenceEvaluator
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

    proto = OnnxExporter.export_node(node)
    names = [f"in{i}" if n else "" for i, n in enumerate(proto.input)]
    outs = [f"out{i}" if n else "" for i, n in enumerate(proto.output)]
    del proto.input[:], proto.output[:]
    proto.input.extend(names)
    proto.output.extend(outs)
    graph = helper.make_graph([proto], "node", [onnx.ValueInfoProto(name=n) for n in names if n],
                              [onnx.ValueInfoProto(name=n) for n in outs if n])
    opset = _opset_for(node.op, tuple(sorted(node.attrs)), len(node.inputs))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    evaluator = ReferenceEvaluator(model)
    _EVALUATORS[key] = (node, evaluator, names)
    return evaluator, names


@cache
def _opset_for(op: str, attrs: tuple[str, ...], n_inputs: int) -> int:
    """The newest opset (13..21) whose schema of `op` takes these attributes and input count
    (ReduceMean with an `axes` attribute is opset 13 semantics; with an axes input, 18)."""
    for version in _OPSETS:
        try:
            schema = onnx.defs.get_schema(op, version, "")
        except onnx.defs.SchemaError:
            continue
        if set(attrs) <= set(schema.attributes) and schema.min_input <= n_inputs <= \
                schema.max_input:
            return version
    return _OPSETS[0]
