"""One calibration run: every requested intermediate tensor is observed from one ORT session.

The model is copied with shape inference (ONNX Runtime needs an element type on every graph output)
and its outputs replaced by exactly the requested tensors, so ORT prunes nodes that feed none of
them. Each batch runs once; observers keep statistics only, so memory is flat in the number of
images. Requested graph inputs are observed from the feeds directly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np
import onnx

from onnxvq.calibrate.observers import Observer
from onnxvq.core.errors import CalibrationError

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
    """Run the batches once and return `{tensor: observer}` with every batch observed."""
    names = list(dict.fromkeys(tensors))
    graph_inputs = {i.name for i in model.graph.input}
    from_feeds = [n for n in names if n in graph_inputs]
    from_session = [n for n in names if n not in graph_inputs]
    observers = {n: make_obs(n) for n in names}
    sess = None
    if from_session:
        sess = exposed_session(model, from_session, session_factory)
    count, started = 0, time.perf_counter()
    for index, feeds in enumerate(batches):
        values = dict(zip(from_session, _run(sess, from_session, feeds, index), strict=True))
        values.update((n, np.asarray(feeds[n])) for n in from_feeds)
        for name in names:
            _observe(observers[name], name, values[name], index)
        count = index + 1
    if count == 0:
        raise CalibrationError("no calibration batches (the data source is empty)")
    log.info("calibrated %d tensors over %d batches in %.1f s", len(names), count,
             time.perf_counter() - started)
    return observers


def exposed_session(model: onnx.ModelProto, names: Sequence[str],
                    session_factory: Callable[[onnx.ModelProto], object] | None = None):
    """A session whose outputs are exactly `names`. A model over 2 GB is not copied: its session
    is opened from an external-data copy on disk with those outputs (`core.external`)."""
    from onnxvq.core.runtime import output_session

    if session_factory is None:
        return output_session(model, exposed_outputs(model, names))
    return session_factory(expose(model, names))


def expose(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` whose graph outputs are exactly `names`, typed from shape inference."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.output[:]
    copy.graph.output.extend(exposed_outputs(model, names))
    return copy


def exposed_outputs(model: onnx.ModelProto, names: Sequence[str],
                    ) -> list[onnx.ValueInfoProto]:
    """Value infos for `names`, typed from shape inference (on the weightless skeleton of a
    model over 2 GB); untyped ones fall back to float."""
    from onnxvq.core.external import infer_shapes

    produced = {o for node in model.graph.node for o in node.output if o}
    missing = [n for n in names if n not in produced]
    if missing:
        raise CalibrationError(f"tensors not in the model: {', '.join(missing[:10])}"
                               + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""))
    try:
        g = infer_shapes(model).graph
    except Exception as exc:  # inference is only for types; an untyped output falls back to float
        log.warning("shape inference failed (%s); untyped outputs are assumed float", exc)
        g = model.graph
    known = {v.name: v for v in (*g.value_info, *g.output, *g.input)}
    outputs = []
    for name in names:
        info = known.get(name)
        if info is None or not info.type.tensor_type.elem_type:
            info = onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        outputs.append(info)
    return outputs


def _run(sess, names: list[str], feeds: Mapping[str, np.ndarray], index: int) -> list:
    if sess is None:
        return []
    try:
        return sess.run(names, dict(feeds))
    except Exception as exc:  # ORT raises its own exception types for bad feeds
        raise CalibrationError(f"calibration batch {index} failed to run: {exc}") from exc


def _observe(observer: SupportsUpdate, name: str, value: np.ndarray, index: int) -> None:
    # onnxvq observers check finiteness on their own min/max pass; others get a check here
    if (not isinstance(observer, Observer) and value.dtype.kind == "f"
            and not np.isfinite(value).all()):
        raise CalibrationError(f"tensor '{name}' contains NaN or Inf in calibration batch {index}")
    try:
        observer.update(value)
    except CalibrationError as exc:
        raise CalibrationError(f"{exc} (calibration batch {index})") from exc
