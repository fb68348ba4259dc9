"""The search calibration methods by name, and the step that refines the base observer's qparams.

`block-mse` and `similarity` first calibrate every site with OMSE over all the calibration data
(`base_method`), then `refine` re-chooses the ranges and weight clipping inside each transformer
block (`search.py`). Sites outside blocks (patch embedding, head) keep the OMSE ranges.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxvq.calibrate.quant import qparams_from_range
from onnxvq.calibrate.twin import levels, softmax_threshold
from onnxvq.core.params import TwinQParams

if TYPE_CHECKING:  # the search is imported when a search method runs (every quantize imports this)
    from onnxvq.calibrate.search import Objective

log = logging.getLogger(__name__)
SEARCH_BASE = "omse"


def _objectives() -> dict[str, Callable[[], Objective]]:
    from onnxvq.calibrate.search_block import BlockMse, LayerMse
    from onnxvq.calibrate.search_similarity import Similarity

    return {"block-mse": BlockMse, "similarity": Similarity, "twin": LayerMse}


SEARCH_METHODS = ("block-mse", "similarity", "twin")
FISHER_METHODS = ("block-mse", "twin")  # output-MSE metrics (similarity is a correlation)


def base_method(method: str) -> str:
    """The observer that gives a method its starting ranges (the method itself when it is one)."""
    return SEARCH_BASE if method in SEARCH_METHODS else method


def refine(model: onnx.ModelProto, structure, plan, cfg, batches, total: int, input_name: str,
           observers: Mapping, qparams: dict[str, dict]) -> tuple[dict, dict, dict, dict]:
    """(qparams with the searched ranges, weight scales per node, twin quantizers per tensor, a
    summary) for `cfg.method`."""
    from onnxvq.calibrate.search import search_scales, strided_subset

    t0 = time.perf_counter()
    n = cfg.search_samples
    images = strided_subset(batches, total, min(n, total), input_name)
    ranges = {t: tuple(q.range) for t, q in qparams.items()}
    full = {t: _full_range(observers[t]) for t in qparams}
    objective = _objectives()[cfg.method]()
    if cfg.fisher and cfg.method not in FISHER_METHODS:
        log.warning("fisher did nothing: it weights the %s metrics, not %s",
                    " and ".join(FISHER_METHODS), cfg.method)
    objective.scores_nodes = {a.scores_matmul for a in structure.attentions}
    twins = twin_sites(structure, plan) if cfg.method == "twin" else {}
    state = search_scales(model, structure, plan, cfg, images, ranges, full, objective,
                          twins=twins)
    twin = {t: _twin_record(t, kind, state.twins[t], plan, cfg)
            for t, kind in twins.items() if t in state.twins}
    out = {}
    for t, q in qparams.items():
        lo, hi = state.ranges[t]
        if (lo, hi) == tuple(q.range):
            out[t] = q
            continue
        s, z = qparams_from_range(lo, hi, q.bits, symmetric=cfg.symmetric, signed=cfg.symmetric)
        out[t] = replace(q, scale=float(s), zero_point=int(z), range=(float(lo), float(hi)))
    info = {"search": cfg.method, "search_samples": len(images), "blocks": state.trace,
            "search_seconds": round(time.perf_counter() - t0, 3),
            "twin": {t: r.to_dict() for t, r in twin.items()}, "fisher": state.fisher}
    weights = {k: np.asarray(v, np.float32) for k, v in state.weight_scales.items()}
    return out, weights, twin, info


def twin_sites(structure, plan) -> dict[str, str]:
    """Tensors that get a twin-uniform quantizer: attention probabilities read by A·V alone, and
    GELU outputs read by fc2 alone (the two-branch deployment rewrites that one consumer)."""
    sites = {s.tensor: s for s in plan.activations if len(s.consumers) == 1}
    out = {a.probs: "softmax" for a in structure.attentions
           if a.probs in sites and sites[a.probs].consumers == (a.context_matmul,)}
    for m in structure.mlps:
        t = m.activation.output
        if m.activation.kind.startswith("gelu") and t in sites and \
                sites[t].consumers == (m.fc2.node,):
            out[t] = "gelu"
    return out


def _twin_record(tensor: str, kind: str, steps, plan, cfg) -> TwinQParams:
    site = next(s for s in plan.activations if s.tensor == tensor)
    k = levels(site.bits)
    low, high = (float(v) for v in steps)
    signed = cfg.symmetric
    low_zp = k if (kind == "gelu" and not signed) else 0
    threshold = softmax_threshold(low, site.bits) if kind == "softmax" else 0.0
    return TwinQParams(tensor, kind, site.bits, low, high, float(threshold), low_zp, 0,
                       "int8" if signed else "uint8", site.consumers[0])


def _full_range(obs) -> tuple[float, float]:
    exact = getattr(obs, "exact", None)  # PTS's tee of (base, exact min/max)
    if exact is not None:
        return tuple(float(v) for v in exact.range())
    hist = getattr(obs, "hist", None)
    if hist is not None:
        return float(hist.min), float(hist.max)
    return tuple(float(v) for v in obs.range())
