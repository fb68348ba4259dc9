"""What a model needs before canonicalisation can fold it: an IR version ONNX Runtime runs, and
static image dims.

IR version: graphsurgeon keeps the model's IR version and its constant folding runs the graph in
ONNX Runtime, which refuses IR versions above the newest it knows; folding then did nothing
(error_ok) and a model stamped IR 99 lost every canonical pass silently. The IR version only
says which proto features a file may use; a version ONNX Runtime reads is lowered to
`MAX_IR_VERSION` when no tensor uses a newer element type, anything above is refused.

Dynamic height/width: folding the attention scale, the Reshape targets and the position
embedding's interpolation needs the image size. The input's symbolic dims after the batch axis
are fixed to the calibration shape for canonicalisation, calibration and the gate, and
`restore_input` puts the symbolic dims back on the written model (which then computes at that
size: the folded constants hold it; the note says so).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

import onnx
from onnx import TensorProto, helper

from onnxvq.core.errors import UnsupportedModelError
from onnxvq.core.graph import MAX_IR_VERSION

log = logging.getLogger(__name__)

# Element types IR 10 defines (UINT4/INT4 are the last, 21 and 22).
_IR10_TYPES = max(TensorProto.UINT4, TensorProto.INT4)


def lower_ir_version(model: onnx.ModelProto, where: str = "model") -> onnx.ModelProto:
    """`model` (edited in place) at IR `MAX_IR_VERSION` when it was above it and ORT reads it."""
    version = model.ir_version
    if version <= MAX_IR_VERSION:
        return model
    newest = newest_ort_ir()
    if version > newest:
        raise UnsupportedModelError(
            f"{where}: IR version {version} is newer than onnxruntime reads (up to {newest}); "
            f"re-export it, or set ir_version to {MAX_IR_VERSION} if it uses no newer feature")
    newer = sorted({t for t in _elem_types(model) if t > _IR10_TYPES})
    if newer:
        names = ", ".join(TensorProto.DataType.Name(t) for t in newer)
        raise UnsupportedModelError(f"{where}: IR version {version} with element types {names}, "
                                    f"which onnxvq cannot fold or quantize")
    log.info("%s: IR version %d lowered to %d for folding", where, version, MAX_IR_VERSION)
    model.ir_version = MAX_IR_VERSION
    return model


@functools.cache
def newest_ort_ir() -> int:
    """The newest IR version this onnxruntime loads (probed once on a one-node model)."""
    import onnxruntime as ort

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    best = MAX_IR_VERSION
    for version in range(MAX_IR_VERSION + 1, onnx.IR_VERSION + 2):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = version
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception:  # ORT raises its own Fail type for an unknown IR version
            break
        best = version
    return best


def symbolic_image_dims(model: onnx.ModelProto) -> list[tuple[int, str]]:
    """(axis, name) of the first input's symbolic dims after the batch axis."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [(i, d.dim_param or "?") for i, d in enumerate(dims)
            if i > 0 and not d.HasField("dim_value")]


def fix_input_dims(model: onnx.ModelProto, sample_shape: Sequence[int],
                   where: str = "model") -> list[tuple[int, str]]:
    """Give the first input's symbolic non-batch dims the values of `sample_shape` (no batch
    axis), in place; returns what was symbolic, for `restore_input`."""
    symbolic = symbolic_image_dims(model)
    if not symbolic:
        return []
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(sample_shape) != len(dims) - 1:
        raise UnsupportedModelError(f"{where}: input has rank {len(dims)}, the samples "
                                    f"{len(sample_shape) + 1}")
    for axis, _ in symbolic:
        dims[axis].dim_value = int(sample_shape[axis - 1])
    fixed = "x".join(str(int(d)) for d in sample_shape)
    log.warning("note: %s has symbolic input dims %s; folded at the calibration shape %s: the "
                "written model keeps them symbolic but computes at %s", where,
                ", ".join(n for _, n in symbolic), fixed, fixed)
    return symbolic


def restore_input(model: onnx.ModelProto, symbolic: list[tuple[int, str]]) -> onnx.ModelProto:
    """Put back the symbolic dims `fix_input_dims` replaced (in place)."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for axis, name in symbolic:
        dims[axis].dim_param = name
    return model


def _elem_types(model: onnx.ModelProto) -> set[int]:
    g = model.graph
    types = {t.data_type for t in g.initializer}
    types |= {v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    return types


def prepare_input(model: onnx.ModelProto, sample_shape: Callable[[], Sequence[int]],
                  where: str = "model") -> Callable[[], list[tuple[int, str]]]:
    """Lower the IR version and fix symbolic image dims (at `sample_shape()`, asked only when
    needed) on `model` in place; returns `undo()`, which restores `model` and returns the dims it
    fixed (for `restore_input` on the written model)."""
    ir_version = model.ir_version
    lower_ir_version(model, where)
    symbolic = fix_input_dims(model, sample_shape(), where) if symbolic_image_dims(model) else []

    def undo() -> list[tuple[int, str]]:
        restore_input(model, symbolic)
        model.ir_version = ir_version
        return symbolic

    return undo
