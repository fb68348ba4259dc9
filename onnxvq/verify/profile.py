"""Where a model's time goes: ONNX Runtime's profiler per node and per op type, with FLOPs, bytes
moved, arithmetic intensity and the machine's roofline (`onnxvq.verify.roofline`).

Times come from ORT's own profiler (`SessionOptions.enable_profiling`), so they describe the graph
ORT really runs, after its fusions (MatMulIntegerToFloat, QLinearMatMul, BiasGelu...). Shapes and
dtypes come from the same trace (`input_type_shape`/`output_type_shape` of each kernel event), so
FLOPs and bytes are those of the fused kernels too. FLOPs: 2·M·N·K for MatMul-like and Gemm-like
kernels, 2·out·(C_in/group·k_h·k_w) for convolutions, 4·B·T²·C for the fused attentions
(Q·Kᵀ and A·V), a small per-element constant for the rest
(`_PER_ELEMENT`; data-movement ops count 0). Bytes: every input and output once (weights
included), i.e. the traffic a kernel must at least cause when nothing stays in cache.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from onnxvq.core import external
from onnxvq.core.runtime import random_inputs, session_options

_DTYPE_BYTES = {"float": 4, "float16": 2, "double": 8, "int64": 8, "int32": 4, "int16": 2,
                "uint16": 2, "int8": 1, "uint8": 1, "bool": 1}
_MATMUL = {"MatMul", "FusedMatMul", "MatMulInteger", "MatMulIntegerToFloat", "QLinearMatMul",
           "DynamicQuantizeMatMul", "LogIntMatMul", "MatMulNBits", "Gemm", "QGemm",
           "QuantizedLinear", "QuantizedLinearQuantize", "QuantizedLinearGeluQuantize"}
_CONV = {"Conv", "FusedConv", "ConvInteger", "QLinearConv", "NhwcFusedConv"}
# onnxvq's fused attentions: packed QKV codes [B, T, 3C] -> [B, T, C]; Q.K^T and A.V are each
# 2·B·T·T·C (C = heads·head_dim), the softmax between them is left out (it needs the heads).
_ATTENTION = {"QLinearAttention", "LogIntAttention"}
# Approximate FLOPs per output element of the non-GEMM kernels (exp/erf counted as one op).
_PER_ELEMENT = {"LayerNormalization": 8, "SkipLayerNormalization": 9, "IntLayerNorm": 8,
                "Softmax": 5, "LogIntSoftmax": 8, "Gelu": 8, "BiasGelu": 9, "FastGelu": 9,
                "Erf": 1, "Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Relu": 1, "Tanh": 1,
                "QuantizeLinear": 3, "DequantizeLinear": 2, "DynamicQuantizeLinear": 4,
                "QLinearAdd": 3, "QLinearMul": 3, "QLinearSoftmax": 5, "ReduceMean": 1, "Sqrt": 1,
                "Exp": 1, "Pow": 1, "Neg": 1, "Where": 1, "Equal": 1, "Less": 1, "Greater": 1,
                "ReduceSum": 1, "ReduceMax": 1, "Max": 1, "Min": 1, "Clip": 2, "Sigmoid": 4,
                # onnxvq's fused float-to-code kernels (plugins/README.md)
                "GeluQuantizeLinear": 24, "AddLayerNormQuantize": 12, "AddMulQuantizeLinear": 5,
                "AddIntLayerNorm": 13}
_INT_TYPES = {"int8", "uint8"}
_TYPE_NAMES = {"float32": "float", "float64": "double"}  # numpy names -> ORT trace names
# Ops ORT runs as views of their input (no data moved).
_ALIASES = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape"}


class _Rates:
    """Arithmetic intensity and achieved rate of anything with flops, bytes and ms."""

    flops: int
    bytes: int
    ms: float

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else 0.0

    @property
    def gflops_s(self) -> float:
        return self.flops / (self.ms * 1e6) if self.ms > 0 else 0.0


@dataclass
class NodeProfile(_Rates):
    name: str
    op_type: str
    ms: float  # mean kernel time per run
    flops: int
    bytes: int
    int8: bool  # its main inputs are 8-bit integers (the int8 compute ceiling applies)


@dataclass
class OpTypeProfile(_Rates):
    op_type: str
    nodes: int
    ms: float
    flops: int
    bytes: int
    int8: bool


@dataclass
class ModelProfile:
    model: str
    batch: int
    runs: int
    total_ms: float  # mean of ORT's model_run events (the measured total)
    nodes: list[NodeProfile] = field(default_factory=list)

    def by_op_type(self) -> list[OpTypeProfile]:
        groups: dict[str, list[NodeProfile]] = defaultdict(list)
        for n in self.nodes:
            groups[n.op_type].append(n)
        rows = [OpTypeProfile(op, len(ns), sum(n.ms for n in ns), sum(n.flops for n in ns),
                              sum(n.bytes for n in ns), any(n.int8 for n in ns))
                for op, ns in groups.items()]
        return sorted(rows, key=lambda r: -r.ms)

    @property
    def kernel_ms(self) -> float:
        return sum(n.ms for n in self.nodes)

    def to_dict(self) -> dict:
        def row(r) -> dict:
            return {**asdict(r), "intensity": r.intensity, "gflops_s": r.gflops_s}

        return {"model": self.model, "batch": self.batch, "runs": self.runs,
                "total_ms": self.total_ms, "kernel_ms": self.kernel_ms,
                "op_types": [row(r) for r in self.by_op_type()],
                "nodes": [row(n) for n in self.nodes]}


def profile_models(models: Mapping[str, onnx.ModelProto | str | os.PathLike], *, batch: int = 1,
                   runs: int = 20, warmup: int = 3, threads: int = 2) -> dict[str, ModelProfile]:
    """Profile several models with their runs interleaved (one run of each in turn), so that load
    from other processes falls on all of them alike. ORT traces every run of a profiling session;
    the first `warmup` runs of each are dropped from its trace."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp, ExitStack() as files:
        sessions, weights = {}, {}
        for i, (label, model) in enumerate(models.items()):
            src = _source(model, files)
            weights[label] = _optimized_weights(src, threads, os.path.join(tmp, f"opt{i}.onnx"))
            so = session_options(threads=threads)
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(tmp, f"prof{i}")
            sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
            sessions[label] = (sess, random_inputs(sess, batch=batch))
        for _ in range(warmup + runs):
            for sess, feeds in sessions.values():
                sess.run(None, feeds)
        traces = {}
        for label, (sess, _) in sessions.items():
            with open(sess.end_profiling()) as f:
                traces[label] = json.load(f)
    return {label: parse_trace(events, warmup=warmup, runs=runs, batch=batch, model=label,
                               weights=weights[label])
            for label, events in traces.items()}


def _source(model: onnx.ModelProto | str | os.PathLike, files: ExitStack) -> str | bytes:
    """What a session opens: a path as given; a ModelProto serialised, or, over 2 GB
    (`core.external`), written once with external data into a folder that `files` removes
    (protobuf cannot serialise it whole; both sessions on it read that one copy)."""
    from onnxvq.core.graph import MAX_IR_VERSION, compatible_ir

    if not isinstance(model, onnx.ModelProto):
        return str(model)
    if external.is_large(model):
        ir = min(model.ir_version, MAX_IR_VERSION)
        return str(files.enter_context(external.on_disk(model, ir_version=ir)))
    return compatible_ir(model).SerializeToString()


def _optimized_weights(src, threads: int, path: str) -> dict[str, list]:
    """Per node of the graph ORT runs: its inputs as (name-is-initializer, dtype, shape) or None
    for activations. ORT's trace leaves out the weights it pre-packed (MatMul/Gemm B), so their
    shapes come from the optimized model ORT writes out: its weights go to an external-data file
    (a model over 2 GB cannot be written inline) and only their dims and types are read back."""
    import onnxruntime as ort

    so = session_options(threads=threads)
    so.optimized_model_filepath = path
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                os.path.basename(path) + ".data")
    so.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        graph = onnx.load(path, load_external_data=False).graph
    except Exception:  # ORT could not write it: fall back to the trace's shapes alone
        return {}
    inits = {t.name: (onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name, list(t.dims))
             for t in graph.initializer}
    return {n.name: [inits.get(i) for i in n.input] for n in graph.node}


def profile_model(model: onnx.ModelProto | str | os.PathLike, *, batch: int = 1, runs: int = 20,
                  warmup: int = 3, threads: int = 2, name: str | None = None) -> ModelProfile:
    label = name or (str(model) if not isinstance(model, onnx.ModelProto) else "model")
    return profile_models({label: model}, batch=batch, runs=runs, warmup=warmup,
                          threads=threads)[label]


def parse_trace(events: list[dict], *, warmup: int, runs: int, batch: int, model: str,
                weights: Mapping[str, list] | None = None) -> ModelProfile:
    """Per-node mean kernel times over the last `runs` model runs of an ORT trace."""
    run_events = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    kept = run_events[warmup:warmup + runs]
    if not kept:
        raise ValueError("the trace holds no model_run events")
    start, end = kept[0]["ts"], kept[-1]["ts"] + kept[-1]["dur"]
    times: dict[str, float] = defaultdict(float)
    info: dict[str, dict] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if not start <= e["ts"] <= end:
            continue
        node = e["name"][: -len("_kernel_time")]
        times[node] += e["dur"]
        info.setdefault(node, e.get("args", {}))
    weights = weights or {}
    nodes = [_node(node, info[node], us / 1e3 / len(kept), weights.get(node))
             for node, us in times.items()]
    total = float(np.mean([e["dur"] for e in kept])) / 1e3
    return ModelProfile(model, batch, len(kept), total, nodes)


def _node(name: str, args: dict, ms: float, weights: list | None) -> NodeProfile:
    inputs = _merge(_shapes(args.get("input_type_shape", [])), weights)
    outputs = _shapes(args.get("output_type_shape", []))
    op = args.get("op_name", "?")
    moved = 0 if op in _ALIASES else sum(_nbytes(t, s) for t, s in inputs + outputs)
    int8 = bool(inputs) and inputs[0][0] in _INT_TYPES and op not in (
        "DequantizeLinear", "Transpose", "Reshape", "Cast", "Concat", "Split", "Gather", "Slice")
    return NodeProfile(name, op, ms, node_flops(op, inputs, outputs), moved, int8)


def _shapes(entries: list[dict]) -> list[tuple[str, list[int]]]:
    out = []
    for entry in entries:
        for dtype, shape in entry.items():
            out.append((dtype, [int(d) for d in shape]))
    return out


def _merge(traced: list, weights: list | None) -> list:
    """The node's full input list: the trace's entries in order, with the initializers it left
    out (pre-packed weights) put back from the optimized model."""
    if not weights:
        return traced
    out, rest = [], list(traced)
    for w in weights:
        if w is None or (rest and rest[0][0] == _TYPE_NAMES.get(w[0], w[0]) and rest[0][1] == w[1]):
            if rest:
                out.append(rest.pop(0))
        else:
            out.append((_TYPE_NAMES.get(w[0], w[0]), w[1]))
    return out + rest


def _nbytes(dtype: str, shape: list[int]) -> int:
    return _DTYPE_BYTES.get(dtype, 4) * int(np.prod(shape, dtype=np.int64))


def node_flops(op: str, inputs: list[tuple[str, list[int]]],
               outputs: list[tuple[str, list[int]]]) -> int:
    """FLOPs of one kernel from its runtime shapes (a multiply-add counts 2)."""
    if not outputs:
        return 0
    out = int(np.prod(outputs[0][1], dtype=np.int64))
    if op in _MATMUL and inputs:
        return 2 * out * int(inputs[0][1][-1])  # K = A's last dim (no transA: see placement)
    if op in _ATTENTION and len(outputs[0][1]) == 3:
        b, t, c = outputs[0][1]
        return 4 * b * t * t * c
    if op in _CONV and len(inputs) >= 2:
        w = inputs[3][1] if op == "QLinearConv" else inputs[1][1]
        return 2 * out * int(np.prod(w[1:], dtype=np.int64))
    return _PER_ELEMENT.get(op, 0) * out
