"""Models over protobuf's 2 GB limit: never serialised whole, never copied whole.

A ModelProto over 2 GB can be held in memory but not serialised, so every stage that would
serialise one (the checker, shape inference, an ONNX Runtime session, saving) goes through here:

- shapes and checks run on a *skeleton*: the model with its large initializers replaced by graph
  inputs of the same type and shape (inference needs their shapes, not their values);
- a session or a saved file gets the graph written with its large initializers as references
  into one external data file, written tensor by tensor from the proto (no copy of the model).

`LARGE_BYTES` is the weight size above which a model takes this path; tests lower it to run the
path on small models.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import onnx
from onnx import TensorProto, numpy_helper

# Weights over this take the external-data path; the margin leaves room for the graph itself.
LARGE_BYTES = 2**31 - 1 - 2**26
KEEP_INLINE = 4096  # initializers up to this many bytes stay in skeletons (shape constants)


def tensor_bytes(t: TensorProto) -> int:
    """Bytes of an initializer's values, from its dims and type (reads no data). Plain ints:
    `is_large` sums this over every initializer, several times a run."""
    return math.prod(t.dims) * _itemsize(t.data_type)


@functools.cache
def _itemsize(data_type: int) -> int:
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize
    except Exception:  # strings and unknown types: count them as 4-byte values
        return 4


def weight_bytes(model: onnx.ModelProto) -> int:
    return sum(tensor_bytes(t) for t in model.graph.initializer)


def is_large(model: onnx.ModelProto) -> bool:
    """Whether `model` must take the external-data path (`LARGE_BYTES` of weights or more)."""
    return weight_bytes(model) >= LARGE_BYTES


def _header(model: onnx.ModelProto, outputs: Sequence[onnx.ValueInfoProto] | None,
            ) -> onnx.ModelProto:
    """`model` without initializers (and with `outputs` as its outputs, if given)."""
    out = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version",
                  "doc_string"):
        setattr(out, field, getattr(model, field))
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    out.metadata_props.extend(model.metadata_props)
    src, g = model.graph, out.graph
    g.name, g.doc_string = src.name, src.doc_string
    g.node.extend(src.node if outputs is None else _needed(src, outputs))
    g.input.extend(src.input)
    g.output.extend(src.output if outputs is None else outputs)
    g.value_info.extend(src.value_info)
    g.sparse_initializer.extend(src.sparse_initializer)
    return out


def _needed(graph: onnx.GraphProto, outputs: Sequence[onnx.ValueInfoProto]) -> list:
    """The nodes `outputs` depend on, in graph order (all of them when a node has a subgraph,
    whose outer-scope reads are not in its inputs)."""
    nodes = list(graph.node)
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in nodes for a in n.attribute):
        return nodes
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    keep, todo = set(), [o.name for o in outputs]
    while todo:
        i = producer.get(todo.pop())
        if i is not None and i not in keep:
            keep.add(i)
            todo.extend(nodes[i].input)
    return [n for i, n in enumerate(nodes) if i in keep]


def skeleton(model: onnx.ModelProto, *, batch1: bool = False,
             max_ir: int | None = None) -> onnx.ModelProto:
    """`model` with each initializer over `KEEP_INLINE` bytes replaced by a graph input of the same
    type and shape: what the checker and shape inference need, a few MB for any size of model.
    `batch1` sets the first input's batch dim to 1 (data propagation then folds the
    batch-dependent Reshapes); `max_ir` caps its IR version."""
    out = _header(model, None)
    if max_ir is not None:
        out.ir_version = min(out.ir_version, max_ir)
    g = out.graph
    if batch1 and g.input and g.input[0].type.tensor_type.shape.dim:
        g.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    for init in model.graph.initializer:
        if tensor_bytes(init) <= KEEP_INLINE:
            g.initializer.append(init)
        else:
            g.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type,
                                                              list(init.dims)))
    return out


def infer_shapes(model: onnx.ModelProto, *, max_ir: int | None = None,
                 **kwargs) -> onnx.ModelProto:
    """ONNX shape inference, at an IR version capped to `max_ir`, never changing `model`; on the
    skeleton when `model` is large (the result then has no weights: read its value_info, not
    its initializers)."""
    if is_large(model):
        model = skeleton(model, max_ir=max_ir)
    elif max_ir is not None and model.ir_version > max_ir:
        model = _copy(model)
        model.ir_version = max_ir
    return onnx.shape_inference.infer_shapes(model, **kwargs)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def write_external(model: onnx.ModelProto, path: str | os.PathLike, *,
                   outputs: Sequence[onnx.ValueInfoProto] | None = None,
                   data_file: str | os.PathLike | None = None, location: str | None = None,
                   ir_version: int | None = None, threshold: int = 1024) -> Path:
    """Write `model` to `path` with every initializer over `threshold` bytes in one external data
    file, tensor by tensor: `model` is neither copied nor changed. The data goes to `data_file`
    (default `<path>.data`) and the graph names it `location` (default its file name: a writer
    that renames the data afterwards gives the final name). `outputs` replaces the graph outputs
    and `ir_version` the IR version in the written file; then only the nodes and weights those
    outputs need are written."""
    path = Path(path)
    data_file = Path(data_file) if data_file is not None else path.with_name(path.name + ".data")
    location = location or data_file.name
    header = _header(model, outputs)
    if ir_version is not None:
        header.ir_version = ir_version
    used = {i for n in header.graph.node for i in n.input} | {o.name for o in header.graph.output}
    with open(data_file, "wb") as data:
        for init in model.graph.initializer:
            if init.name not in used and outputs is not None:
                continue  # outside what the outputs need: not written
            if tensor_bytes(init) <= threshold or init.data_location == TensorProto.EXTERNAL:
                header.graph.initializer.append(init)
                continue
            header.graph.initializer.append(_written(init, data, location))
    onnx.save_model(header, str(path))
    return path


def _written(init: TensorProto, data, data_name: str) -> TensorProto:
    """A reference to `init`'s values, appended to `data` (64-byte aligned, as onnx writes)."""
    pad = -data.tell() % 64
    if pad:
        data.write(b"\0" * pad)
    offset = data.tell()
    raw = init.raw_data if init.HasField("raw_data") else numpy_helper.to_array(init).tobytes()
    data.write(raw)
    return external_ref(init.name, init.data_type, init.dims, data_name, offset, len(raw))


def external_ref(name: str, data_type: int, dims: Sequence[int], location: str, offset: int,
                 length: int) -> TensorProto:
    """An initializer whose values are `length` bytes at `offset` in the file `location`."""
    ref = TensorProto(name=name, data_type=data_type)
    ref.dims.extend(dims)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = ref.external_data.add()
        entry.key, entry.value = key, value
    ref.data_location = TensorProto.EXTERNAL
    return ref


@contextmanager
def on_disk(model: onnx.ModelProto, *, outputs: Sequence[onnx.ValueInfoProto] | None = None,
            ir_version: int | None = None) -> Iterator[Path]:
    """`model` written with external data in a temporary folder (removed afterwards): the path to
    open a session from."""
    with tempfile.TemporaryDirectory(prefix="onnxvq-large-") as d:
        yield write_external(model, Path(d) / "model.onnx", outputs=outputs,
                             ir_version=ir_version)


def release_freed() -> None:
    """Hand freed heap back to the system: glibc keeps it, so after a model over 2 GB is dropped
    the weights ONNX Runtime maps next would count on top of memory no longer used."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass
