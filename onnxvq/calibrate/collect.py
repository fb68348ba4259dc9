"""One calibration run: every requested intermediate tensor is observed from one ORT session.

The model is copied with shape inference (ONNX Runtime needs an element type on every graph output)
and its outputs replaced by exactly the requested tensors, so ORT prunes nodes that feed none of
them. Each batch runs once; observers keep statistics only, so memory is flat in the number of
images. Requested graph inputs are observed from the feeds directly.

A range-only observer (MinMax, EMA: `Observer.range_only`) of a float32 tensor gets its batch
statistics from the graph itself: ReduceMin, ReduceMax and ReduceL1 (finite exactly when every
value is, barring a float32 overflow of the sum) appended to the copy, and every tensor's three
concatenated into one output vector (`STATS`). The tensor then never becomes a graph output: ORT
reuses its buffer, nothing is copied into numpy, and the reductions run on ORT's threads. On
DeiT-S that is most of the calibration's memory (each of the ~60 observed tensors held at batch
size, twice). With onnxvq's native library the three are one com.onnxvq `RangeStats` node, one
pass over the tensor (the same min and max bits, plugins/README.md); a library without that
kernel falls back to the three standard reductions. A tensor that is a view of another (a
Reshape/Transpose/... of it, `value_sources`) is reduced at that source: the same values, and
ORT keeps its own rewrites of the view.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Protocol

import numpy as np
import onnx

from onnxvq.calibrate.observers import Observer
from onnxvq.calibrate.prefetch import prefetched
from onnxvq.core.errors import CalibrationError
from onnxvq.plugins.functions import DOMAIN

log = logging.getLogger(__name__)


class SupportsUpdate(Protocol):
    def update(self, x: np.ndarray) -> None: ...


def collect(
    model: onnx.ModelProto,
    tensors: Sequence[str],
    batches: Iterable[Mapping[str, np.ndarray]],
    make_obs: Callable[[str], SupportsUpdate],
    *,
    session_factory: Callable[[onnx.ModelProto], object] | None = None,
) -> dict[str, SupportsUpdate]:
    """Run the batches once and return `{tensor: observer}` with every batch observed. The
    next batch is read and preprocessed on a background thread while one runs (`prefetch`)."""
    names = list(dict.fromkeys(tensors))
    graph_inputs = {i.name for i in model.graph.input}
    from_feeds = [n for n in names if n in graph_inputs]
    from_session = [n for n in names if n not in graph_inputs]
    observers = {n: make_obs(n) for n in names}
    sess, reduced = None, []
    if from_session:
        reduced = [n for n in from_session if getattr(observers[n], "range_only", False)]
        whole = [n for n in from_session if n not in set(reduced)]
        sess, reduced = exposed_session(model, whole, session_factory, reduced)
    source = value_sources(model, reduced)
    slot = {s: i for i, s in enumerate(dict.fromkeys(source.values()))}  # row of STATS
    outputs = [n for n in from_session if n not in source] + ([STATS] if slot else [])
    count, started = 0, time.perf_counter()
    for index, feeds in enumerate(prefetched(batches)):
        values = dict(zip(outputs, _run(sess, outputs, feeds, index), strict=True))
        rows = values.pop(STATS).reshape(-1, 3).tolist() if slot else []  # Python floats
        values.update((n, np.asarray(feeds[n])) for n in from_feeds)
        for name in names:
            if name in source:
                _observe_range(observers[name], name, *rows[slot[source[name]]], index)
            else:
                _observe(observers[name], name, values[name], index)
        del values  # before the next run allocates its outputs
        count = index + 1
    if count == 0:
        raise CalibrationError("no calibration batches (the data source is empty)")
    log.info("calibrated %d tensors over %d batches in %.1f s", len(names), count,
             time.perf_counter() - started)
    return observers


_REDUCTIONS = {"min": "ReduceMin", "max": "ReduceMax", "l1": "ReduceL1"}
_STATS_OP = "RangeStats"  # com.onnxvq: the three above in one pass (plugins/ort/src/range_stats.cc)
STATS = "onnxvq::range_stats"  # the one output: (min, max, l1) of each reduced source, in order
_AXIS0 = "onnxvq::axis0"  # Unsqueeze's axes for the standard reductions' scalars


def _reduced(name: str, kind: str) -> str:
    return f"{name}::onnxvq_{kind}"


def exposed_session(model: onnx.ModelProto, names: Sequence[str],
                    session_factory: Callable[[onnx.ModelProto], object] | None = None,
                    reduced: Sequence[str] = ()) -> tuple[object, list[str]]:
    """A session whose outputs are `names` and the in-graph reductions of `reduced` (`expose`),
    and the tensors of `reduced` that really are reduced. A model over 2 GB is not copied: its
    session is opened from an external-data copy on disk with those outputs (`core.external`),
    every tensor exposed whole (its graph cannot take the reductions without a copy)."""
    from onnxvq.core.external import is_large
    from onnxvq.core.runtime import make_session, output_session

    if session_factory is None and is_large(model):
        return output_session(model, exposed_outputs(model, [*names, *reduced]), lean=True), []
    native = session_factory is None and bool(reduced) and _native_stats()
    exposed = expose(model, names, reduced, native=native)
    source, kept = value_sources(model, reduced), set(_stats_sources(model, reduced))
    reduced = [n for n in reduced if source[n] in kept]
    if native:
        try:  # one RangeStats node per tensor instead of three reductions
            return make_session(exposed, lean=True), reduced
        except Exception as exc:  # noqa: BLE001 - a library built before RangeStats existed
            log.info("RangeStats kernel unavailable (%s); reducing with standard ops", exc)
            exposed = expose(model, names, reduced)
    factory = session_factory or partial(make_session, lean=True)
    return factory(exposed), reduced


def _native_stats() -> bool:
    """Whether sessions load onnxvq's native library (which has the RangeStats kernel)."""
    from onnxvq.plugins.native import native_available

    return native_available()


_SAME_VALUES = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity")
_PIECES = ("Gather", "Split", "Slice")  # ops ORT's transpose optimizer pushes a Transpose through


def value_sources(model: onnx.ModelProto, names: Sequence[str]) -> dict[str, str]:
    """For each of `names`, the tensor that holds the same values and that ORT computes anyway:
    upstream through Reshape/Transpose/Squeeze/Unsqueeze/Flatten/Identity (itself when its
    producer is none of those). Its min, max and finiteness are the same, and reducing it
    instead leaves the view unobserved, so ORT can still fuse or drop it (6 Transposes on
    vit_cifar10). One exception goes downstream (`_read_through_transpose`)."""
    producer = {o: n for n in model.graph.node for o in n.output if o}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for i in dict.fromkeys(node.input):
            readers.setdefault(i, []).append(node)
    outputs = {o.name for o in model.graph.output}
    sources = {}
    for name in names:
        t = name
        while t in producer and producer[t].op_type in _SAME_VALUES and producer[t].input:
            t = producer[t].input[0]
        sources[name] = _read_through_transpose(t, producer, readers, outputs)
    return sources


def _read_through_transpose(t: str, producer, readers, outputs) -> str:
    """The output of the one Transpose that reads `t`, where `t` is a piece (Gather/Split/Slice)
    of a Transpose's output: the key of torch's MultiheadAttention, k = Gather(qkv heads) read
    only by k^T = Transpose(k) -> MatMul. ORT pushes the heads' Transpose through the Gather and
    merges it with k^T's into one, so k itself exists in no layout but for its reduction: 6
    extra Transposes a vit_cifar10 run (1 ms of a 40 ms batch). k^T is computed anyway."""
    node, users = producer.get(t), readers.get(t, [])
    if (node is None or node.op_type not in _PIECES or t in outputs or len(users) != 1
            or users[0].op_type != "Transpose" or node.input[0] not in producer
            or producer[node.input[0]].op_type != "Transpose"):
        return t
    return users[0].output[0]


def expose(model: onnx.ModelProto, names: Sequence[str], reduced: Sequence[str] = (),
           *, native: bool = False) -> onnx.ModelProto:
    """A copy of `model` whose graph outputs are exactly `names`, typed from shape inference,
    then, if any float32 tensor is in `reduced`, the one output `STATS`: min, max and L1 of
    each one's value source (`value_sources`; once per source, in order), from reductions
    right after the source's producer (first, for a graph input), so that ORT runs them
    before freeing the tensor, concatenated at the end: one output instead of three scalars
    per tensor, each of which cost ORT's Python binding a few microseconds a run. A tensor of
    `reduced` that is not float32 is exposed whole instead. `native`: one com.onnxvq
    RangeStats node per source gives the three (a session needs onnxvq's native library)."""
    typed = {o.name: o for o in exposed_outputs(model, [*names, *reduced])}
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.output[:]
    sources = _stats_sources(model, reduced, typed)
    after = {src: _stats_nodes(src, native) for src in sources}
    if after:
        nodes = list(copy.graph.node)
        produced = {o for node in nodes for o in node.output}
        del copy.graph.node[:]
        copy.graph.node.extend(r for t, rs in after.items() if t not in produced for r in rs)
        for node in nodes:
            copy.graph.node.extend([node, *(r for o in node.output for r in after.get(o, ()))])
        pieces = [out for rs in after.values() for node in rs[-1 if native else -3:]
                  for out in node.output]
        copy.graph.node.append(onnx.helper.make_node("Concat", pieces, [STATS], axis=0,
                                                     name=f"{STATS}/node"))
        copy.graph.output.append(onnx.helper.make_tensor_value_info(
            STATS, onnx.TensorProto.FLOAT, [3 * len(after)]))
        if native and not any(o.domain == DOMAIN for o in copy.opset_import):
            copy.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))
        if not native:
            copy.graph.initializer.append(onnx.numpy_helper.from_array(
                np.zeros(1, np.int64), _AXIS0))
    kept = set(sources)
    source = value_sources(model, reduced)
    copy.graph.output.extend(typed[n] for n in [*names, *(r for r in reduced
                                                          if source[r] not in kept)])
    return copy


def _stats_sources(model: onnx.ModelProto, reduced: Sequence[str],
                   typed: Mapping[str, onnx.ValueInfoProto] | None = None) -> list[str]:
    """The value sources `expose` reduces for `reduced`, in STATS order: those of float32
    tensors (the others are exposed whole), each once."""
    typed = typed or {o.name: o for o in exposed_outputs(model, reduced)}
    return list(dict.fromkeys(
        src for name, src in value_sources(model, reduced).items()
        if typed[name].type.tensor_type.elem_type == onnx.TensorProto.FLOAT))


def _stats_nodes(src: str, native: bool) -> list[onnx.NodeProto]:
    """(min, max, l1) of `src` as one float [3] (RangeStats) or three [1] (standard ops)."""
    if native:
        return [onnx.helper.make_node(_STATS_OP, [src], [f"{src}::onnxvq_stats"],
                                      name=f"{src}::onnxvq_stats/node", domain=DOMAIN)]
    scalars = [onnx.helper.make_node(op, [src], [_reduced(src, k)], keepdims=0,
                                     name=f"{_reduced(src, k)}/node")
               for k, op in _REDUCTIONS.items()]
    return scalars + [onnx.helper.make_node("Unsqueeze", [_reduced(src, k), _AXIS0],
                                            [_reduced(src, k) + "/1d"],
                                            name=f"{_reduced(src, k)}/1d/node")
                      for k in _REDUCTIONS]


def exposed_outputs(model: onnx.ModelProto, names: Sequence[str],
                    ) -> list[onnx.ValueInfoProto]:
    """Value infos for `names`: the model's own where it has them typed (the canonical model
    carries every value_info from its stage's shape inference), else typed from shape inference
    (on the weightless skeleton of a model over 2 GB); untyped ones fall back to float."""
    from onnxvq.core.external import infer_shapes

    produced = {o for node in model.graph.node for o in node.output if o}
    missing = [n for n in names if n not in produced]
    if missing:
        raise CalibrationError(f"tensors not in the model: {', '.join(missing[:10])}"
                               + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""))
    known = _typed(model.graph)
    if any(n not in known for n in names):
        try:
            known = _typed(infer_shapes(model).graph)
        except Exception as exc:  # inference is only for types; untyped outputs fall back
            log.warning("shape inference failed (%s); untyped outputs are assumed float", exc)
    return [known.get(n) or onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
            for n in names]


def _typed(g: onnx.GraphProto) -> dict[str, onnx.ValueInfoProto]:
    return {v.name: v for v in (*g.value_info, *g.output, *g.input)
            if v.type.tensor_type.elem_type}


def _run(sess, names: list[str], feeds: Mapping[str, np.ndarray], index: int) -> list:
    if sess is None:
        return []
    try:
        return sess.run(names, dict(feeds))
    except Exception as exc:  # ORT raises its own exception types for bad feeds
        raise CalibrationError(f"calibration batch {index} failed to run: {exc}") from exc


def _observe_range(observer, name: str, lo, hi, l1, index: int) -> None:
    lo, hi, l1 = float(lo), float(hi), float(l1)
    if lo > hi and l1 == 0:  # an empty tensor: min/max are the reductions' identities
        return
    try:
        observer.update_range(lo, hi, finite=math.isfinite(l1))
    except CalibrationError as exc:
        raise CalibrationError(f"{exc} (calibration batch {index})") from exc


def _observe(observer: SupportsUpdate, name: str, value: np.ndarray, index: int) -> None:
    # onnxvq observers check finiteness on their own min/max pass; others get a check here
    if (not isinstance(observer, Observer) and value.dtype.kind == "f"
            and not np.isfinite(value).all()):
        raise CalibrationError(f"tensor '{name}' contains NaN or Inf in calibration batch {index}")
    try:
        observer.update(value)
    except CalibrationError as exc:
        raise CalibrationError(f"{exc} (calibration batch {index})") from exc
