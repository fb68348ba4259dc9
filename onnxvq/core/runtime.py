"""ONNX Runtime sessions as onnxvq uses them everywhere.

Every session onnxvq opens sets `session.set_denormal_as_zero` (denormal activations slow ORT's
CPU kernels by an order of magnitude on real models) and registers onnxvq's native custom-op library
when it is built, so IntLayerNorm/LogIntSoftmax run as kernels instead of their inlined functions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from onnxvq.core import external
from onnxvq.core.errors import OnnxvqError
from onnxvq.core.graph import MAX_IR_VERSION, compatible_ir

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def session_options(
    *, threads: int | None = None, custom_ops: bool = True, optimize: bool = True,
    lean: bool = False, arena: bool = True, spin: bool = True,
) -> ort.SessionOptions:
    """`lean`: for sessions whose graph has many side outputs (calibration's in-graph
    reductions). ORT's default order can run a tensor's reader long after its producer, keeping
    every observed tensor alive to the end of the run; priority order frees each as soon as it
    is read. ORT's memory pattern, planned from the first run, would then keep a second arena
    of the same size. Measured on DeiT-S at batch 16: 1.09 GB -> 0.14 GB per run.
    A lean session's threads also do not spin between kernels: a calibration run is throughput,
    and spinning threads take the cores the others (and the data loader) need. Results are the
    same bits; on 2 busy cores vit_cifar10 calibrates in 0.57x the wall time (README).
    `arena=False`: tensors go back to the allocator after each run instead of staying in the
    session's arena, for the many small sessions a search keeps alive at once.
    `spin=False`: the pool threads block instead of spinning between runs (for several sessions
    timed in turn on the same cores, as the speed benchmark does)."""
    so = ort.SessionOptions()
    so.enable_cpu_mem_arena = arena
    if lean or not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if lean:
        so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        so.enable_mem_pattern = False
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if custom_ops:
        lib = _custom_op_library()
        if lib is not None:
            so.register_custom_ops_library(lib)
    return so


# ORT's fusions a lean (calibration) session leaves out. SkipLayerNormFusion turns the canonical
# graph's residual Add + LayerNormalization into SkipLayerNormalization, whose CPU kernel (ORT
# 1.32) is ~4x the two ops it replaces: on vit_cifar10 (batch 16, 1 thread, AMD EPYC) 8.0 ms
# of a 26 ms calibration run against ~2 ms unfused, 1.40x -> 1.09x the FP32 export's forward.
# The observed values are the same ops' up to float rounding (the LayerNorm's: <= 4e-6
# relative on vit_cifar10's ranges, tests/calib/test_lean_session.py).
LEAN_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def make_session(
    model: onnx.ModelProto | str | os.PathLike,
    *,
    threads: int | None = None,
    custom_ops: bool = True,
    optimize: bool = True,
    outputs: Sequence[onnx.ValueInfoProto] | None = None,
    lean: bool = False,
    arena: bool = True,
    spin: bool = True,
) -> ort.InferenceSession:
    """An InferenceSession on the CPU provider with onnxvq's settings. A ModelProto over 2 GB
    (`core.external`) is opened from a temporary external-data copy on disk, never serialised;
    `outputs` (a large model only) replaces its graph outputs in that copy. A `lean` session
    also leaves out ORT's `LEAN_DISABLED_OPTIMIZERS`."""
    so = session_options(threads=threads, custom_ops=custom_ops, optimize=optimize, lean=lean,
                         arena=arena, spin=spin)
    disabled = list(LEAN_DISABLED_OPTIMIZERS) if lean else None
    if isinstance(model, onnx.ModelProto) and external.is_large(model):
        with external.on_disk(model, outputs=outputs,
                              ir_version=min(model.ir_version, MAX_IR_VERSION)) as path:
            return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"],
                                        disabled_optimizers=disabled)
    if outputs is not None:
        raise ValueError("make_session(outputs=...) is for models over 2 GB; use expose()")
    if isinstance(model, onnx.ModelProto):
        source: str | bytes = compatible_ir(model).SerializeToString()
    else:
        source = str(model)
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled)


def output_session(model: onnx.ModelProto, outputs: Sequence[onnx.ValueInfoProto],
                   **kwargs) -> ort.InferenceSession:
    """A session on `model` whose graph outputs are `outputs` (ORT then prunes what they do not
    need). A model over 2 GB is not copied: the session opens from an external-data file with
    only what those outputs need (`core.external`)."""
    if external.is_large(model):
        return make_session(model, outputs=outputs, **kwargs)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.output[:]
    copy.graph.output.extend(outputs)
    return make_session(copy, **kwargs)


def random_inputs(
    sess: ort.InferenceSession, *, batch: int = 1, seed: int = 0,
    dims: Mapping[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """Deterministic N(0,1) inputs for every graph input; symbolic dims get `batch`
    (or `dims[name]`)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in sess.get_inputs():
        shape = [_concrete(d, batch, dims) for d in inp.shape]
        dtype = _ORT_TYPES.get(inp.type, np.float32)
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[inp.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds


def run(sess: ort.InferenceSession, feeds: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    names = list(outputs) if outputs is not None else [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds)), strict=True))


def _prime_denormals() -> None:
    """ONNX Runtime sets flush-to-zero on the calling thread only from the first session a process
    opens. graphsurgeon's constant folding opens one without the option, after which every session
    ran denormal-slow (the shared CCT: 8x slower). Open a trivial session with it first."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "prime",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    make_session(model, custom_ops=False)


_prime_denormals()


def _concrete(dim: object, batch: int, dims: Mapping[str, int] | None) -> int:
    if isinstance(dim, int) and dim > 0:
        return dim
    if dims and isinstance(dim, str) and dim in dims:
        return dims[dim]
    return batch


# Where the native custom-op kernels are: `onnxvq.plugins.native` registers its finder here when
# it is imported (the plugins build on the core, so the core cannot import them).
_library_finders: list[Callable[[], str | None]] = []


def register_custom_op_library(find: Callable[[], str | None]) -> None:
    """Have every session with `custom_ops=True` load the library `find()` names (if any)."""
    if find not in _library_finders:
        _library_finders.append(find)


def _custom_op_library() -> str | None:
    for find in _library_finders:
        try:
            path = find()
        except OnnxvqError:  # a library asked for by name (ONNXVQ_ORT_LIBRARY) that cannot be used
            raise
        except Exception:  # a broken build must not stop plain sessions
            path = None
        if path:
            return path
    return None
