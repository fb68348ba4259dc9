"""One calibration run: every requested intermediate tensor is observed from one ORT session.

The model is copied with shape inference (ONNX Runtime needs an element type on every graph output)
and its outputs replaced by exactly the requested tensors, so ORT prunes nodes that feed none of
them. Each batch runs once; observers keep statistics only, so memory is flat in the number of
images. Requested graph inputs are observed from the feeds directly.

A range-only observer (MinMax, EMA: `Observer.range_only`) of a float tensor gets its batch
statistics from the graph itself: ReduceMin, ReduceMax and ReduceL1 (finite exactly when every
value is, barring a float32 overflow of the sum) appended to the copy, three scalar outputs in place
of the tensor. The tensor then never becomes a graph output: ORT reuses its buffer, nothing is
copied into numpy, and the reductions run on ORT's threads. On DeiT-S that is most of the
calibration's memory (each of the ~60 observed tensors held at batch size, twice). With onnxvq's
native library the three are one com.onnxvq `RangeStats` node, one pass over the tensor (the
same min and max bits, plugins/README.md); a library without that kernel falls back to the
three standard reductions. A tensor that
is a view of another (a Reshape/Transpose/... of it, `value_sources`) is reduced at that source:
the same values, and ORT keeps its own rewrites of the view.
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
    outputs = list(dict.fromkeys(o for n in from_session for o in (
        [_reduced(source[n], k) for k in _REDUCTIONS] if n in source else [n])))
    count, started = 0, time.perf_counter()
    for index, feeds in enumerate(prefetched(batches)):
        values = dict(zip(outputs, _run(sess, outputs, feeds, index), strict=True))
        values.update((n, np.asarray(feeds[n])) for n in from_feeds)
        for name in names:
            if name in values:
                _observe(observers[name], name, values[name], index)
            else:
                _observe_range(observers[name], name, *(values[_reduced(source[name], k)]
                                                        for k in _REDUCTIONS), index)
        del values  # before the next run allocates its outputs
        count = index + 1
    if count == 0:
        raise CalibrationError("no calibration batches (the data source is empty)")
    log.info("calibrated %d tensors over %d batches in %.1f s", len(names), count,
             time.perf_counter() - started)
    return observers


_REDUCTIONS = {"min": "ReduceMin", "max": "ReduceMax", "l1": "ReduceL1"}
_STATS_OP = "RangeStats"  # com.onnxvq: the three above in one pass (plugins/ort/src/range_stats.cc)
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)  # ORT's CPU ReduceL1 types


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
    exposed = expose(model, names, reduced)
    outs = {o.name for o in exposed.graph.output}
    source = value_sources(model, reduced)
    reduced = [n for n in reduced if _reduced(source[n], "min") in outs]
    if session_factory is None and reduced and _native_stats():
        try:  # one RangeStats node per tensor instead of three reductions
            return make_session(expose(model, names, reduced, native=True), lean=True), reduced
        except Exception as exc:  # noqa: BLE001 - a library built before RangeStats existed
            log.info("RangeStats kernel unavailable (%s); reducing with standard ops", exc)
    factory = session_factory or partial(make_session, lean=True)
    return factory(exposed), reduced


def _native_stats() -> bool:
    """Whether sessions load onnxvq's native library (which has the RangeStats kernel)."""
    from onnxvq.plugins.native import native_available

    return native_available()


_SAME_VALUES = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity")


def value_sources(model: onnx.ModelProto, names: Sequence[str]) -> dict[str, str]:
    """For each of `names`, the tensor upstream of it that holds the same values (through
    Reshape/Transpose/Squeeze/Unsqueeze/Flatten/Identity; itself when its producer is none of
    those). Its min, max and finiteness are the same, and reducing it instead leaves the view
    unobserved, so ORT can still fuse or drop it (6 Transposes on vit_cifar10)."""
    producer = {o: n for n in model.graph.node for o in n.output if o}
    sources = {}
    for name in names:
        t = name
        while t in producer and producer[t].op_type in _SAME_VALUES and producer[t].input:
            t = producer[t].input[0]
        sources[name] = t
    return sources


def expose(model: onnx.ModelProto, names: Sequence[str], reduced: Sequence[str] = (),
           *, native: bool = False) -> onnx.ModelProto:
    """A copy of `model` whose graph outputs are exactly `names`, typed from shape inference,
    then, for each float tensor of `reduced`, the scalar `::onnxvq_{min,max,l1}` reductions of
    its value source (`value_sources`; one set per source), each node right after the source's
    producer (first, for a graph input), so that ORT runs it before freeing the tensor (a
    tensor of `reduced` that is not float is exposed whole instead). `native`: one com.onnxvq
    RangeStats node per source gives the three (a session needs onnxvq's native library)."""
    typed = {o.name: o for o in exposed_outputs(model, [*names, *reduced])}
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.output[:]
    whole, after = list(names), {}
    for name, src in value_sources(model, reduced).items():
        elem = typed[name].type.tensor_type.elem_type
        if elem not in _FLOATS:
            whole.append(name)
            continue
        if src in after:
            continue
        after[src] = _stats_nodes(src, native)
        copy.graph.output.extend(onnx.helper.make_tensor_value_info(_reduced(src, kind), elem, [])
                                 for kind in _REDUCTIONS)
    if native and after and not any(o.domain == DOMAIN for o in copy.opset_import):
        copy.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))
    if after:
        nodes = list(copy.graph.node)
        produced = {o for node in nodes for o in node.output}
        del copy.graph.node[:]
        copy.graph.node.extend(r for t, rs in after.items() if t not in produced for r in rs)
        for node in nodes:
            copy.graph.node.extend([node, *(r for o in node.output for r in after.get(o, ()))])
    copy.graph.output.extend(typed[n] for n in whole)
    return copy


def _stats_nodes(src: str, native: bool) -> list[onnx.NodeProto]:
    outs = [_reduced(src, kind) for kind in _REDUCTIONS]
    if native:
        return [onnx.helper.make_node(_STATS_OP, [src], outs, name=f"{src}::onnxvq_stats/node",
                                      domain=DOMAIN)]
    return [onnx.helper.make_node(op, [src], [out], keepdims=0, name=f"{out}/node")
            for op, out in zip(_REDUCTIONS.values(), outs, strict=True)]


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
