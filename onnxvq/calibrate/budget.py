"""The batch size a run can afford: a fixed batch dimension, and a bound on activation memory.

A model exported at batch 1 (the dynamo exporter's default) refuses any other batch with ONNX
Runtime's raw shape error, so the batch is clamped to a fixed batch dimension, with a note.
Calibration exposes every observed activation as a session output at once; at 518 px one ViT-S
sample is hundreds of MB of attention scores and probabilities, and the default batch of 16 was
OOM-killed at 23.8 GB. The bytes per sample are estimated from shape inference on a weightless copy
of the graph, and the batch is reduced to fit the budget (also with a note).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import onnx

from onnxvq.core.external import skeleton

log = logging.getLogger(__name__)

DEFAULT_BUDGET = 4 << 30  # bytes of observed activations per batch, before the safety factor
ENV_BUDGET = "ONNXVQ_CALIB_MEMORY_GB"
# ORT's own arena holds the outputs and intermediates while numpy's observers copy a tensor at a
# time: peak memory is about twice the exposed bytes (measured: DeiT-T at 224 px, see README).
SAFETY = 2.0
LIVE = 4  # tensors of a forward pass alive at once, in units of its largest


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The batch the first input is fixed to, or None when it is symbolic."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
        return int(dims[0].dim_value)
    return None


def clamp_to_fixed(model: onnx.ModelProto, requested: int, what: str) -> int:
    """`requested`, or the model's fixed batch dimension (with a note) when it has one."""
    fixed = fixed_batch(model)
    if fixed is None or fixed == requested:
        return requested
    log.warning("note: the model's input has a fixed batch of %d; %s runs at batch %d instead of "
                "%d", fixed, what, fixed, requested)
    return fixed


def exact_batches(feeds: Iterable[dict], fixed: int | None) -> Iterator[dict]:
    """Drop a short last batch a fixed-batch model cannot run (with a note)."""
    for f in feeds:
        n = len(next(iter(f.values())))
        if fixed is not None and n != fixed:
            log.warning("note: the last %d samples do not fill the fixed batch of %d and are "
                        "left out", n, fixed)
            continue
        yield f


def sample_shape(spec) -> tuple[int, ...]:
    """The shape (no batch axis) the calibration samples of DataSpec `spec` have: a tensor
    file's own, else the preprocessing's (imagenet's 3x224x224 by default)."""
    from onnxvq.calibrate.data import open_source

    prep = spec.resolve_preprocess()
    if spec.source is None:
        return tuple(prep.sample_shape)
    return tuple(open_source(spec.source, prep, 1, ["N", "C", "H", "W"]).sample_shape)


def calibration_batch(model: onnx.ModelProto, requested: int, tensors: Sequence[str],
                      reduced: Sequence[str] = ()) -> int:
    """The batch for calibrating `tensors`: clamped to a fixed batch, then to the memory budget.
    `reduced` tensors are observed by in-graph reductions (`collect`): never held, they count as
    the run's working set, a few of them alive at once (`LIVE` times the largest)."""
    batch = clamp_to_fixed(model, requested, "calibration")
    if fixed_batch(model) is not None:
        return batch
    sizes = tensor_bytes(model, [*tensors, *reduced])  # one shape inference at most
    per_sample = sum(sizes[t] for t in dict.fromkeys(tensors))
    if reduced:
        per_sample += LIVE * max(sizes[t] for t in reduced)
    budget = memory_budget()
    fits = max(1, int(budget // max(per_sample * SAFETY, 1)))
    if fits < batch:
        log.warning("note: calibration observes %.0f MB of activations per sample; batch %d "
                    "instead of %d keeps it within %.1f GB (%s)", per_sample / 1e6, fits, batch,
                    budget / 2**30, ENV_BUDGET)
        return fits
    return batch


def memory_budget() -> float:
    """`$ONNXVQ_CALIB_MEMORY_GB`, else 4 GiB, never more than half the memory available now."""
    env = os.environ.get(ENV_BUDGET)
    budget = float(env) * 2**30 if env else float(DEFAULT_BUDGET)
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return budget
    return min(budget, available / 2)


def activation_bytes(model: onnx.ModelProto, tensors: Sequence[str]) -> float:
    """Bytes of `tensors` for one sample (see `tensor_bytes`)."""
    names = list(dict.fromkeys(tensors))
    return float(sum(tensor_bytes(model, names).values()))


def tensor_bytes(model: onnx.ModelProto, tensors: Sequence[str]) -> dict[str, float]:
    """Bytes of each of `tensors` for one sample. The canonical model's own value_info usually
    has every shape (no extra inference); when a non-batch dim is unknown there (a Reshape to a
    computed shape), shapes are inferred once, on a weightless copy at batch 1 with data
    propagation (once for all tensors: it was once per tensor, 0.4 s of a 256-image run)."""
    names = list(dict.fromkeys(tensors))
    known = _bytes(model, names)
    if known is not None:
        return known
    inferred = onnx.shape_inference.infer_shapes(skeleton(model, batch1=True), data_prop=True)
    return _bytes(inferred, names, strict=False) or dict.fromkeys(names, 0.0)


def _bytes(model: onnx.ModelProto, names: list[str],
           strict: bool = True) -> dict[str, float] | None:
    """The per-sample size of each name; None (strict) when a shape past the batch axis is
    unknown."""
    g = model.graph
    infos = {v.name: v.type.tensor_type for v in (*g.value_info, *g.output, *g.input)}
    sizes = {}
    for name in names:
        t = infos.get(name)
        dims = list(t.shape.dim)[1:] if t is not None and t.HasField("shape") else None
        if dims is None or any(not d.HasField("dim_value") for d in dims):
            if strict:
                return None
            dims = [d for d in dims or [] if d.HasField("dim_value")]
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize if (
            t is not None and t.elem_type) else 4
        sizes[name] = float(int(np.prod([d.dim_value for d in dims])) * itemsize)
    return sizes
