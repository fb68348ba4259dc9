"""Loading and saving ONNX models faithfully.

Models over 2 GB keep their weights in external data; they load with the data and save with it.
Saving is atomic: the model is written to a temporary name in the target folder, then renamed, so a
failed run never leaves a half-written file behind.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

from onnxvq.core.errors import ModelLoadError, UnsupportedModelError, UsageError
from onnxvq.core.files import temp_beside, umask

# onnx >= 1.23 writes IR 14 by default; onnxruntime 1.31 refuses anything above 13.
MAX_IR_VERSION = 10
MIN_OPSET = 13
MAX_OPSET = 21
_PROTOBUF_LIMIT = 2**31 - 1

logging.getLogger("onnx_graphsurgeon").setLevel(logging.WARNING)
gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.WARNING


def load_model(path: str | os.PathLike, *, check_opset: bool = True) -> onnx.ModelProto:
    """Read a model (with its external data) and check that onnxvq supports its opset."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if path.is_dir():
        raise UsageError(f"{path}: is a directory, expected an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except Exception as exc:  # protobuf raises DecodeError, external data raises OSError/ValueError
        raise ModelLoadError(f"{path}: not a readable ONNX model ({_short(exc)})") from exc
    if not model.graph.node:
        raise ModelLoadError(f"{path}: not an ONNX model (no graph nodes)")
    if check_opset:
        check_supported_opset(model, str(path))
    return model


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise UnsupportedModelError("model imports no default-domain opset")


def check_supported_opset(model: onnx.ModelProto, where: str = "model") -> None:
    version = default_opset(model)
    if not MIN_OPSET <= version <= MAX_OPSET:
        raise UnsupportedModelError(
            f"{where}: opset {version} is not supported (onnxvq handles opsets "
            f"{MIN_OPSET}-{MAX_OPSET}; re-export with one of those)"
        )


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *,
               external_data: bool | None = None) -> Path:
    """Write `model` to `path` atomically. Weights go to `<name>.data` beside it when the model is
    over protobuf's 2 GB limit (or when `external_data=True`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = compatible_ir(model)
    large = external_data if external_data is not None else (
        model.ByteSize() > _PROTOBUF_LIMIT if _fits_bytesize(model) else True)
    data_name = f"{path.name}.data"
    with temp_beside(path) as tmp:  # the one atomic writer (core.files): unique temp, replace
        if large:
            # onnx.save_model moves the weights out of the proto it is given: save a copy so the
            # caller's model keeps its data.
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            onnx.save_model(
                copy, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                location=data_name, size_threshold=1024,
            )
            # External data was written under the final name already; only the graph file moves.
        else:
            onnx.save_model(model, str(tmp))
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    return path


def compatible_ir(model: onnx.ModelProto) -> onnx.ModelProto:
    """Clamp the IR version to one onnxruntime loads; the opset decides the semantics, not IR."""
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
    return model


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    return gs.import_onnx(model)


def to_model(graph: gs.Graph, like: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """Export a graphsurgeon graph, keeping the metadata, IR and functions of `like`."""
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    model = gs.export_onnx(graph, do_type_check=False)
    if like is not None:
        model.ir_version = like.ir_version
        model.producer_name = like.producer_name
        model.producer_version = like.producer_version
        del model.metadata_props[:]
        model.metadata_props.extend(like.metadata_props)
        known = {f.domain + "::" + f.name for f in model.functions}
        model.functions.extend(f for f in like.functions if f.domain + "::" + f.name not in known)
    return compatible_ir(model)


def infer_shapes_into(graph: gs.Graph, model: onnx.ModelProto) -> bool:
    """Give `graph` the tensor shapes ONNX shape inference (with data propagation) finds on
    `model`, the proto it was imported from or exported to: graphsurgeon infers none itself, and
    folding Shape ops or counting heads needs them. Reads the inferred protos' value infos
    directly (no second import). False when inference fails (the graph keeps what it had)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(compatible_ir(model), data_prop=True)
    except Exception:
        return False
    infos = {vi.name: vi.type.tensor_type for vi in (*inferred.graph.value_info,
                                                     *inferred.graph.output)}
    for name, t in graph.tensors().items():
        tt = infos.get(name)
        if not isinstance(t, gs.Variable) or tt is None or not tt.HasField("shape"):
            continue
        t.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                   for d in tt.shape.dim]
        if t.dtype is None and tt.elem_type:
            t.dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
    return True


def _fits_bytesize(model: onnx.ModelProto) -> bool:
    try:
        model.ByteSize()
        return True
    except Exception:
        return False


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]
