"""Classification accuracy on an ImageFolder layout (`<root>/<class>/<image>`), optionally with the
agreement between the model's and a reference model's top-1 predictions.

Labels index the sorted class folder names, so the model's class order must be the alphabetical
order of the folders (torchvision's ImageFolder convention; CIFAR-10's usual order is alphabetical).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from onnxvq.calibrate import batches
from onnxvq.calibrate.data import ImageFolder, check_shape, model_input
from onnxvq.calibrate.preprocess import Preprocess
from onnxvq.calibrate.spec import DataSpec, preprocess_to_dict, recorded_preprocess
from onnxvq.core.errors import CalibrationError, UnsupportedModelError, UsageError
from onnxvq.core.metrics import top1_agreement
from onnxvq.core.runtime import make_session
from onnxvq.verify.compare import as_model

log = logging.getLogger(__name__)

DEFAULT_BATCH = 64


@dataclass(frozen=True)
class Evaluation:
    images: int
    classes: int
    top1: float  # fractions in [0, 1]
    top5: float
    ref_top1: float | None
    agreement: float | None  # fraction of images where model and reference predict the same class
    seconds: float
    preprocess: dict | None = None

    def to_dict(self) -> dict:
        return dict(vars(self))


def evaluate(model: str | os.PathLike | onnx.ModelProto,
             data: DataSpec | str | os.PathLike,
             preset: str | Preprocess | None = None, *,
             ref: str | os.PathLike | onnx.ModelProto | None = None,
             batch_size: int | None = None, limit: int | None = None, seed: int | None = None,
             threads: int | None = None,
             progress: Callable[[int], None] | None = None) -> Evaluation:
    """Top-1/top-5 of `model` on the images of `data` (an ImageFolder root or a DataSpec whose
    source is one; `limit`: an evenly strided, class balanced subset); with `ref`, also the
    reference's top-1 and the top-1 agreement. Without preprocessing settings it uses the ones
    recorded in `model`'s (else `ref`'s) sidecar, else imagenet."""
    spec = DataSpec.coerce(data, preset=preset if isinstance(preset, str) else None,
                           preprocess=preset if isinstance(preset, Preprocess) else None,
                           samples=limit, batch_size=batch_size, seed=seed)
    preprocess = spec.resolve_preprocess(recorded_preprocess(model) or recorded_preprocess(ref))
    proto = as_model(model)
    source = _labelled_images(spec, preprocess, proto)
    name, _ = model_input(proto)
    sessions = [make_session(proto, threads=threads)]
    if ref is not None:
        ref_proto = as_model(ref)
        _check_same_input(proto, ref_proto, model, ref)
        sessions.append(make_session(ref_proto, threads=threads))
    names = (str(model) if isinstance(model, str | os.PathLike) else "the model", f"--ref {ref}")
    hits = np.zeros((len(sessions), 2), dtype=np.int64)  # [model, top1/top5]
    agree, started = 0, time.perf_counter()
    for feeds, labels in batches(source, spec.batch_size or DEFAULT_BATCH, name, progress,
                                 with_labels=True):
        logits = [_logits(s, feeds, len(source.classes), label)
                  for s, label in zip(sessions, names, strict=False)]
        for i, z in enumerate(logits):
            hits[i] += _topk_hits(z, labels)
        if ref is not None:
            agree += top1_agreement(logits[1], logits[0])
    n = len(source)
    result = Evaluation(n, len(source.classes), *(hits[0] / n).tolist(),  # top-1, top-5
                        float(hits[1, 0] / n) if ref is not None else None,
                        agree / n if ref is not None else None,
                        round(time.perf_counter() - started, 3),
                        preprocess=preprocess_to_dict(preprocess))
    log.info("evaluated %d images: top-1 %.4f", n, result.top1)
    return result


def _check_same_input(proto, ref_proto, model, ref) -> None:
    """The reference must take the images the model takes (its input name and image dims), else
    its session fails mid-run on the first batch."""
    (name, shape), (ref_name, ref_shape) = model_input(proto), model_input(ref_proto)
    clash = len(shape) != len(ref_shape) or any(
        a != b and "N" not in (a, b) for a, b in zip(shape[1:], ref_shape[1:], strict=False))
    if name != ref_name or clash:
        where = ref if isinstance(ref, str | os.PathLike) else "the reference"
        raise UsageError(f"--ref {where}: its input {ref_name!r} {ref_shape} is not the "
                         f"model's {name!r} {shape}; give the model this one was quantized from")


def _labelled_images(spec: DataSpec, preprocess: Preprocess, model) -> ImageFolder:
    if spec.source is None:
        raise UsageError("eval needs --data: an ImageFolder root <root>/<class>/<image>")
    source = ImageFolder(spec.source, preprocess, spec.samples, spec.seed)
    if not source.classes or (source.labels < 0).any():
        raise CalibrationError(f"{spec.source}: expected an ImageFolder layout "
                               "<root>/<class>/<image>")
    check_shape(source.sample_shape, model_input(model)[1], str(spec.source))
    return source


def _logits(sess, feeds: dict, classes: int, label: str = "the model") -> np.ndarray:
    try:
        z = sess.run([sess.get_outputs()[0].name], feeds)[0]
    except Exception as exc:  # noqa: BLE001 - ORT's own error types; one line, not a traceback
        lines = [t.strip() for t in str(exc).strip().splitlines()] or [type(exc).__name__]
        raise UnsupportedModelError(f"{label}: ONNX Runtime could not run it on the images: "
                                    f"{' '.join(lines[:2])}") from None
    z = z.reshape(z.shape[0], -1)
    if z.shape[1] < classes:
        raise UsageError(f"the model has {z.shape[1]} outputs per image but the data has "
                          f"{classes} classes")
    return z


def _topk_hits(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    k = min(5, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    top1 = logits.argmax(1) == labels
    return np.array([int(top1.sum()), int((top == labels[:, None]).any(1).sum())])
