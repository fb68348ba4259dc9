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
from onnx import helper

from onnxvq.core import external
from onnxvq.core.errors import ModelLoadError, UnsupportedModelError, UsageError
from onnxvq.core.files import temp_beside, umask
from onnxvq.core.order import tidy

# onnx >= 1.23 writes IR 14 by default; onnxruntime 1.31 refuses anything above 13.
MAX_IR_VERSION = 10
MIN_OPSET = 13
MAX_OPSET = 21

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
    over protobuf's 2 GB limit (`core.external.is_large`) or when `external_data=True`; they are
    written tensor by tensor from `model`, which is neither copied nor changed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    large = external_data if external_data is not None else external.is_large(model)
    data = path.with_name(f"{path.name}.data")
    with temp_beside(path) as tmp, temp_beside(data) as tmp_data:
        if large:  # the graph file names the final data file; both move into place below
            external.write_external(model, tmp, data_file=tmp_data, location=data.name,
                                    ir_version=min(model.ir_version, MAX_IR_VERSION))
        else:
            onnx.save_model(compatible_ir(model), str(tmp))
        for t in (tmp, tmp_data):
            if t.exists():
                os.chmod(t, 0o666 & ~umask())  # mkstemp creates 0600: normal permissions
        if large:
            os.replace(tmp_data, data)
        os.replace(tmp, path)
    return path


def compatible_ir(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` at an IR version onnxruntime loads (the opset decides the semantics, not IR):
    `model` itself when it is one already, else a copy (the caller's model is never changed)."""
    if model.ir_version <= MAX_IR_VERSION:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.ir_version = MAX_IR_VERSION
    return copy


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    """Import `model`. graphsurgeon keeps the model's own `opset_import` field as the graph's
    `import_domains` (and appends to it on export): that one reference kept the whole input
    model alive (a second 2.5 GB for a ViT-H) and changed the caller's model. Plain copies."""
    graph = gs.import_onnx(model)
    for g in (graph, *graph.functions):
        if g.import_domains is not None:
            g.import_domains = [_opset_copy(d) for d in g.import_domains]
    return graph


def _opset_copy(d: onnx.OperatorSetIdProto) -> onnx.OperatorSetIdProto:
    return onnx.helper.make_opsetid(d.domain, d.version)


def to_model(graph: gs.Graph, like: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """Export a graphsurgeon graph, keeping the metadata, IR and functions of `like`."""
    tidy(graph)
    model = _export(graph)
    if like is not None:  # at least the IR its opsets need (opset 21 / INT4 weights: IR 10)
        model.ir_version = max(like.ir_version, helper.find_min_ir_version_for(
            list(model.opset_import), ignore_unknown=True))
        model.producer_name = like.producer_name
        model.producer_version = like.producer_version
        del model.metadata_props[:]
        model.metadata_props.extend(like.metadata_props)
        known = {f.domain + "::" + f.name for f in model.functions}
        model.functions.extend(f for f in like.functions if f.domain + "::" + f.name not in known)
    if model.ir_version > MAX_IR_VERSION:  # our own export: lowered in place, no copy
        model.ir_version = MAX_IR_VERSION
    drop_unused_functions(model)
    return model


def drop_unused_functions(model: onnx.ModelProto) -> int:
    """Remove the local functions no node calls, directly or through another function: a pass
    registers every com.onnxvq function when it adds its first custom op, and a W8/A8 model then
    carried seven function bodies it never uses. Returns how many were removed."""
    by_key = {(f.domain, f.name): f for f in model.functions}
    used: set[tuple[str, str]] = set()
    todo = [model.graph]
    while todo:
        for node in _nodes(todo.pop()):
            key = (node.domain, node.op_type)
            if key in by_key and key not in used:
                used.add(key)
                todo.append(by_key[key])
    keep = [f for f in model.functions if (f.domain, f.name) in used]
    dropped = len(model.functions) - len(keep)
    if dropped:
        del model.functions[:]
        model.functions.extend(keep)
    return dropped


def _nodes(owner):
    """Every node of a graph or function, subgraphs (If/Loop/Scan bodies) included."""
    for node in owner.node:
        yield node
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                yield from _nodes(sub)


def _export(graph: gs.Graph) -> onnx.ModelProto:
    """`gs.export_onnx`, with each weight not yet loaded from its proto copied once, straight into
    the exported model: graphsurgeon's export copies every initializer twice (`make_graph`, then
    `make_model`), three copies of a model over 2 GB alive at once. The weights travel as
    weightless stand-ins through the export and are filled in after it."""
    lazy = gs.ir.tensor.LazyValues
    held = {t.name: t for t in graph.tensors().values()
            if isinstance(t, gs.Constant) and isinstance(t._values, lazy)
            and external.tensor_bytes(t._values.tensor) > external.KEEP_INLINE}
    real = {name: t._values for name, t in held.items()}
    try:
        for name, t in held.items():
            src = real[name].tensor
            t._values = lazy(onnx.TensorProto(name=name, data_type=src.data_type,
                                              dims=src.dims))
        model = gs.export_onnx(graph, do_type_check=False)
    finally:
        for name, t in held.items():
            t._values = real[name]
    for init in model.graph.initializer:
        name = init.name
        if name in real:  # the source proto may name it differently (or not at all)
            init.CopyFrom(real[name].tensor)
            init.name = name
    return model


def adopt_weights(graph: gs.Graph, model: onnx.ModelProto) -> int:
    """Point `graph`'s not-yet-loaded constants at `model`'s initializers of the same name (the
    model `graph` was just exported to), so the proto `graph` was imported from can be freed: a
    model over 2 GB is then held once, not twice. Returns how many were re-pointed."""
    inits = {t.name: t for t in model.graph.initializer}
    moved = 0
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) and isinstance(t._values, gs.ir.tensor.LazyValues):
            init = inits.get(t.name)
            if init is not None:
                t._values = gs.ir.tensor.LazyValues(init)
                moved += 1
    return moved


def infer_shapes_into(graph: gs.Graph, model: onnx.ModelProto) -> bool:
    """Give `graph` the tensor shapes ONNX shape inference (with data propagation) finds on
    `model`, the proto it was imported from or exported to: graphsurgeon infers none itself, and
    folding Shape ops or counting heads needs them. Reads the inferred protos' value infos
    directly (no second import). False when inference fails (the graph keeps what it had)."""
    try:
        inferred = external.infer_shapes(model, max_ir=MAX_IR_VERSION, data_prop=True)
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


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]
