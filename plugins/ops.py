"""Builders for onnxvq's custom nodes, called by the graph-rewrite passes (spec: plugins/README.md).

Each `make_*_node` appends one `com.onnxvq` node to an onnx-graphsurgeon graph and returns its
output tensor, so rewrites chain like graphsurgeon's own builders:

    codes = make_log_int_softmax_node(graph, scores_q, softmax_constants(s_scores), name=...)
    acc = make_log_int_matmul_node(graph, codes, v_q, bits=4, zero_point=0, name=...)
    # acc is int64 with scale s_v * 2^-acc_shift(bits, octave_steps): Cast(FLOAT) and Mul

Every builder also registers the op's ONNX local function and the `com.onnxvq` opset import on the
graph (`register_functions`), so the exported model runs in any ONNX Runtime.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper
from onnx_graphsurgeon.importers.onnx_importer import OnnxImporter

from onnxvq.core.errors import OnnxvqError
from onnxvq.core.order import mark_tidy
from onnxvq.plugins.attention_functions import (
    attention_function_protos,
    log_int_attention_function,
    qlinear_attention_function,
)
from onnxvq.plugins.functions import DOMAIN, OPSET, function_protos
from onnxvq.plugins.fused_functions import fused_function_protos
from onnxvq.plugins.linear_functions import INPUTS as LINEAR_INPUTS
from onnxvq.plugins.linear_functions import MS_DOMAIN, linear_function_protos
from onnxvq.plugins.reference import LayerNormParams, SoftmaxConstants
from onnxvq.plugins.reference.softmax import _check_bits, _check_steps

VERSION = 1
# TensorRT's plugin registry refuses namespaces with a dot, so the plugin namespace is "onnxvq"
# while
# the ONNX domain stays "com.onnxvq" (the parser reads the namespace from this attribute).
PLUGIN_NAMESPACE = "onnxvq"
PLUGIN_ATTRS = {"plugin_version": "1", "plugin_namespace": PLUGIN_NAMESPACE}
LINEAR_OPS = ("QuantizedLinear", "QuantizedLinearQuantize", "QuantizedLinearGeluQuantize")
_OUT_NUMPY = {onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT8: np.int8}


def all_function_protos(opset: int = OPSET, attention_bias: bool = False,
                        ) -> list[onnx.FunctionProto]:
    """Every com.onnxvq local function: the integer ops', the fused attention ops', the
    fused float-to-code ops', then QuantizedLinear's. `attention_bias`: the QLinearAttention and
    LogIntAttention bodies add their `bias` attribute (for a model with a biased node); by
    default they have no bias ops."""
    return (function_protos(opset) + attention_function_protos(opset, attention_bias) +
            fused_function_protos(opset) + linear_function_protos(opset))


BIASED_ATTENTION = {"QLinearAttention": qlinear_attention_function,
                    "LogIntAttention": log_int_attention_function}  # op -> its body's builder


def has_attention_bias(functions) -> bool:
    """Whether these local functions (graphsurgeon's or protos) hold the fused attention bodies
    that add the `bias` attribute: a rebuild at another opset keeps those bodies."""
    return any(f.domain == DOMAIN and f.name in BIASED_ATTENTION and "bias" in _attr_names(f)
               for f in functions)


def _attr_names(f) -> set[str]:
    if isinstance(f, onnx.FunctionProto):
        return {a.name for a in f.attribute_proto} | set(f.attribute)
    return set(f.attrs)


def _use_biased_attention(graph: gs.Graph) -> None:
    """Swap the graph's bias-free fused attention bodies (both ops) for the ones adding `bias`,
    once a node with a bias is added (the bodies are per op, not per node)."""
    if has_attention_bias(graph.functions):
        return
    opset = max(graph.opset or OPSET, OPSET)
    biased = {op: mark_tidy(OnnxImporter.import_function(build(opset, bias=True),
                                                         model_opset=opset))
              for op, build in BIASED_ATTENTION.items()}
    graph.functions = [biased[f.name] if f.domain == DOMAIN and f.name in biased else f
                       for f in graph.functions]


def register_functions(graph: gs.Graph) -> None:
    """Add the com.onnxvq opset import and the local functions to `graph` (idempotent)."""
    domains = list(graph.import_domains or [helper.make_opsetid("", graph.opset)])
    if not any(d.domain == DOMAIN for d in domains):
        domains.append(helper.make_opsetid(DOMAIN, VERSION))
    if not any(d.domain == MS_DOMAIN for d in domains):  # QuantizedLinear's bodies call it
        domains.append(helper.make_opsetid(MS_DOMAIN, 1))
    graph.import_domains = domains
    have = {(f.domain, f.name) for f in graph.functions}
    opset = max(graph.opset or OPSET, OPSET)
    known = _FUNCTION_NAMES.get(opset)
    if known is not None and known <= have:  # all there: building the protos costs ~15 ms a call
        return
    protos = all_function_protos(opset)
    _FUNCTION_NAMES[opset] = frozenset((p.domain, p.name) for p in protos)
    for proto in protos:
        if (proto.domain, proto.name) not in have:
            graph.functions.append(mark_tidy(OnnxImporter.import_function(proto,
                                                                          model_opset=opset)))


# opset -> the (domain, name) of every function all_function_protos(opset) gives, once built
_FUNCTION_NAMES: dict[int, frozenset] = {}


def add_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same for a ModelProto built without graphsurgeon; returns `model`, edited in place."""
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, VERSION))
    have = {(f.domain, f.name) for f in model.functions}
    opset = max(next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                     OPSET), OPSET)
    bias = any(n.op_type in BIASED_ATTENTION and n.domain == DOMAIN
               and any(a.name == "bias" for a in n.attribute) for n in model.graph.node)
    model.functions.extend(p for p in all_function_protos(opset, bias)
                           if (p.domain, p.name) not in have)
    return model


def make_int_layer_norm_node(
    graph: gs.Graph, x: gs.Tensor, params: LayerNormParams, *, name: str
) -> gs.Variable:
    """IntLayerNorm over the last axis of `x` (uint8/int8 PTS codes, last dim C).

    `params` comes from `reference.layernorm_params(gamma, beta, s1, alpha, zp, out_scale, out_zp,
    eps=..., output_dtype=...)`; its three arrays become constants `<name>_alpha/_gamma/_beta`.
    Returns Y (uint8 or int8 per `params.output_dtype`, shape of `x`): codes of (out_scale, out_zp),
    so `DequantizeLinear(Y, out_scale, out_zp)` gives the float LayerNorm output.
    """
    channels = params.alpha.shape[0]
    if x.shape is not None and isinstance(x.shape[-1], int) and x.shape[-1] != channels:
        raise OnnxvqError(f"{name}: input has {x.shape[-1]} channels, parameters have {channels}")
    consts = [
        gs.Constant(f"{name}_{field}", np.ascontiguousarray(getattr(params, field)))
        for field in ("alpha", "gamma", "beta")
    ]
    dtype = _OUT_NUMPY[params.output_dtype]
    return _append(graph, "IntLayerNorm", [x, *consts], params.attributes(), dtype, x.shape, name)


def make_log_int_softmax_node(
    graph: gs.Graph, x: gs.Tensor, constants: SoftmaxConstants, *, name: str
) -> gs.Variable:
    """LogIntSoftmax over the last axis of `x` (int8 or int32 score codes of scale S).

    `constants` = `reference.softmax_constants(S, bits, octave_steps)`. Returns uint8 log codes,
    shape of `x`: code k means 2^(-k/octave_steps) for k <= max_code(bits); zero_code(bits) means
    0 (octave_steps 1: log2 codes, 2: log-sqrt(2) codes).
    """
    return _append(
        graph, "LogIntSoftmax", [x], constants.attributes(), np.uint8, x.shape, name
    )


def make_log_int_matmul_node(
    graph: gs.Graph,
    codes: gs.Tensor,
    v: gs.Tensor,
    *,
    bits: int = 4,
    zero_point: int = 0,
    octave_steps: int = 1,
    name: str,
) -> gs.Variable:
    """codes [..., R, K] (uint8, from LogIntSoftmax with the same `bits`) times v [..., K, D]
    (int8/uint8 codes of V with zero point `zero_point`, same leading dims).

    Returns the exact int64 accumulator [..., R, D]; its float value is `acc * s_v * 2^-F` with
    `F = reference.acc_shift(bits, octave_steps)` (15 for 4 bits, either base): Cast(to=FLOAT)
    then Mul(s_v * 2^-F). `octave_steps` must be the producing LogIntSoftmax's.
    """
    _check_bits(bits)
    _check_steps(octave_steps)
    shape = None
    if codes.shape is not None and v.shape is not None:
        shape = list(codes.shape[:-1]) + [v.shape[-1]]
    attrs = {"bits": bits, "zero_point": zero_point, "octave_steps": octave_steps}
    return _append(graph, "LogIntMatMul", [codes, v], attrs, np.int64, shape, name)


def make_gelu_quantize_linear_node(
    graph: gs.Graph, x: gs.Tensor, bias: gs.Tensor, scale: gs.Tensor, zero_point: gs.Tensor, *,
    name: str, output: gs.Variable | None = None,
) -> gs.Variable:
    """Codes of gelu(x + bias) (erf GELU) with QuantizeLinear's (scale, zero_point): x float
    [..., N], bias float [N], scalar scale and uint8/int8 zero point. `output` (e.g. the replaced
    QuantizeLinear's) receives the codes; by default a new tensor `<name>_out`."""
    zp = zero_point.values if isinstance(zero_point, gs.Constant) else None
    dtype = np.int8 if zp is not None and zp.dtype == np.int8 else np.uint8
    out = _append(graph, "GeluQuantizeLinear", [x, bias, scale, zero_point], {}, dtype, x.shape,
                  name)
    if output is not None:
        graph.nodes[-1].outputs = [output]
        return output
    return out


def make_add_layer_norm_quantize_node(
    graph: gs.Graph, a: gs.Tensor, b: gs.Tensor, gamma: gs.Tensor, beta: gs.Tensor,
    scale: gs.Tensor, zero_point: gs.Tensor, *, epsilon: float, name: str, codes: gs.Variable,
    total: gs.Variable,
) -> None:
    """`total` = a + b (b broadcast over a's leading dimensions) and `codes` = QuantizeLinear's
    codes (scale, zero_point) of LayerNorm(total) over the last axis (gamma, beta [C])."""
    register_functions(graph)
    graph.nodes.append(gs.Node(
        op="AddLayerNormQuantize", name=name, domain=DOMAIN,
        attrs={"epsilon": float(epsilon), **PLUGIN_ATTRS},
        inputs=[a, b, gamma, beta, scale, zero_point], outputs=[codes, total]))


def make_add_mul_quantize_linear_node(
    graph: gs.Graph, a: gs.Tensor, b: gs.Tensor, m: gs.Tensor, scale: gs.Tensor,
    zero_point: gs.Tensor, *, name: str, codes: gs.Variable, total: gs.Variable,
) -> None:
    """`total` = a + b (b broadcast over a's leading dimensions) and `codes` = QuantizeLinear's
    codes (scale, zero_point) of total * m (m [C] over the last axis)."""
    register_functions(graph)
    graph.nodes.append(gs.Node(
        op="AddMulQuantizeLinear", name=name, domain=DOMAIN, attrs=dict(PLUGIN_ATTRS),
        inputs=[a, b, m, scale, zero_point], outputs=[codes, total]))


def make_quantized_linear_node(graph: gs.Graph, inputs: list[gs.Tensor], *, name: str,
                               output: gs.Variable, op: str = "QuantizedLinear") -> None:
    """`output` (float32 [..., N]) = QuantizedLinear(A, B, a_scale, b_scale, a_zero_point,
    b_zero_point, bias): uint8 A [..., K], constant int8 B [K, N], scalar a_scale/a_zero_point,
    b_scale and b_zero_point (0) scalars or [N], bias [N] (the order of MatMulIntegerToFloat).
    `op` QuantizedLinearQuantize / QuantizedLinearGeluQuantize take y_scale and y_zero_point
    (uint8) after those and write uint8 codes."""
    want = len(LINEAR_INPUTS) + (0 if op == "QuantizedLinear" else 2)
    if op not in LINEAR_OPS or len(inputs) != want:
        raise OnnxvqError(f"{op} is not one of {', '.join(LINEAR_OPS)} with {want} inputs "
                          f"({', '.join(LINEAR_INPUTS)}[, y_scale, y_zero_point])")
    register_functions(graph)
    graph.nodes.append(gs.Node(op=op, name=name, domain=DOMAIN, attrs=dict(PLUGIN_ATTRS),
                               inputs=list(inputs), outputs=[output]))


def make_add_int_layer_norm_node(
    graph: gs.Graph, a: gs.Tensor, b: gs.Tensor, m: gs.Tensor, scale: gs.Tensor,
    zero_point: gs.Tensor, alpha: gs.Tensor, gamma: gs.Tensor, beta: gs.Tensor, *,
    attrs: dict[str, int], name: str, codes: gs.Variable, total: gs.Variable,
) -> None:
    """`total` = a + b (b broadcast over a's leading dimensions) and `codes` = IntLayerNorm(
    alpha, gamma, beta; `attrs`, IntLayerNorm's) of the PTS codes QuantizeLinear(total * m,
    scale, zero_point) would give (`attrs["zero_point"]` equal to `zero_point`'s value)."""
    register_functions(graph)
    graph.nodes.append(gs.Node(
        op="AddIntLayerNorm", name=name, domain=DOMAIN,
        attrs={**{k: int(v) for k, v in attrs.items()}, **PLUGIN_ATTRS},
        inputs=[a, b, m, scale, zero_point, alpha, gamma, beta], outputs=[codes, total]))


def _append(
    graph: gs.Graph,
    op: str,
    inputs: list[gs.Tensor],
    attrs: dict[str, int],
    dtype: type,
    shape,
    name: str,
) -> gs.Variable:
    register_functions(graph)
    out = gs.Variable(f"{name}_out", dtype=dtype, shape=None if shape is None else list(shape))
    node = gs.Node(
        op=op,
        name=name,
        domain=DOMAIN,
        attrs={**{k: int(v) for k, v in attrs.items()}, **PLUGIN_ATTRS},
        inputs=inputs,
        outputs=[out],
    )
    graph.nodes.append(node)
    return out


def make_attention_node(graph: gs.Graph, op: str, x: gs.Tensor, attrs: dict, *, name: str,
                        out_shape=None, bias: np.ndarray | None = None) -> gs.Variable:
    """A fused attention node (`QLinearAttention` or `LogIntAttention`) over packed uint8 QKV
    codes `x` [B, N, 3, H, D]; `attrs` are the op's (plugins/README.md: ints, float32 scales);
    `bias` the float32 [W, 1|H, N, N] tensor attribute added to the scores. Returns the
    merged-head uint8 codes [B, N, H * D] of (out_scale, out_zero_point)."""
    if op not in ("QLinearAttention", "LogIntAttention"):
        raise OnnxvqError(f"{op} is not a fused attention op")
    if bias is not None and np.ndim(bias) != 4:
        raise OnnxvqError(f"{op} takes no attention bias of shape {list(np.shape(bias))}")
    register_functions(graph)
    out = gs.Variable(f"{name}_out", dtype=np.uint8, shape=out_shape)
    typed = {k: float(v) if isinstance(v, float) else int(v) for k, v in attrs.items()}
    if bias is not None:
        typed["bias"] = gs.Constant(f"{name}/bias", np.ascontiguousarray(bias, np.float32))
        _use_biased_attention(graph)
    graph.nodes.append(gs.Node(op=op, name=name, domain=DOMAIN,
                               attrs={**typed, **PLUGIN_ATTRS}, inputs=[x], outputs=[out]))
    return out
