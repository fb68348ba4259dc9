"""Accuracy-aware mixed precision: raise the most sensitive Linears to 8 bits until a target holds.

`QuantConfig(target_sqnr=DB)` and/or `max_drop=PCT` (top-1 disagreement with FP32, in percent)
make `onnxvq.api.quantize` run this loop around the plain quantizer:

1. quantize at the configured bits and measure the first output against the FP32 model on
   `CHECK_SAMPLES` samples the calibration did not see (the fidelity gate's held-out samples);
2. if the target misses, rank the Linears below 8 bits, most sensitive first, either by
   `sensitivity` (the output SQNR when that Linear alone is put back to FP32 in the quantized
   model, `verify.sensitivity.keep_quantized`: measured, one ORT session per Linear) or by
   `nuclear` (PTQ-for-ViT's prior: the nuclear norm of the Linear's FP32 output features, mean
   over a few samples; no quantized runs);
3. raise the first k of the ranking to 8 bits (weights and input, `QuantConfig.layer_bits`) with
   the smallest k that meets the target, found by bisection on k (each probe a full quantize);
   if all at 8 bits still miss, keep the first k float (`skip`) the same way.

The chosen bit-width per Linear, the ranking and every probe are returned in
`QuantResult.mixed_precision` (the sidecar's "mixed_precision", the CLI's output, the report).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import onnx

from onnxvq.calibrate.collect import expose
from onnxvq.calibrate.data import batches
from onnxvq.core.config import QuantConfig
from onnxvq.core.metrics import error_stats, top1_agreement
from onnxvq.core.runtime import make_session
from onnxvq.verify.gate import check_source, input_shape_name
from onnxvq.verify.sensitivity import keep_quantized

log = logging.getLogger(__name__)

CHECK_SAMPLES = 32
NUCLEAR_SAMPLES = 4
Quantize = Callable[[QuantConfig], "object"]  # QuantConfig -> QuantResult


@dataclass(frozen=True)
class Fidelity:
    sqnr_db: float
    agreement: float  # top-1 agreement with FP32, 0..1

    def meets(self, cfg: QuantConfig) -> bool:
        return ((cfg.target_sqnr is None or self.sqnr_db >= cfg.target_sqnr)
                and (cfg.max_drop is None or 100 * (1 - self.agreement) <= cfg.max_drop + 1e-9))


class _Checker:
    """The FP32 outputs on the held-out samples, and the fidelity of any model against them."""

    def __init__(self, canonical: onnx.ModelProto, feeds: list[dict]):
        self.feeds = feeds
        self.ref = self.outputs(canonical)

    def outputs(self, model: onnx.ModelProto) -> np.ndarray:
        sess = make_session(model)
        name = sess.get_outputs()[0].name
        return np.concatenate([sess.run([name], f)[0] for f in self.feeds]).astype(np.float64)

    def fidelity(self, model: onnx.ModelProto) -> Fidelity:
        got = self.outputs(model)
        agree = top1_agreement(self.ref, got) / len(got) if self.ref.ndim >= 2 else 1.0
        return Fidelity(float(error_stats(self.ref, got)["sqnr_db"]), float(agree))


def mixed_precision(quantize: Quantize, cfg: QuantConfig, check_data=None):
    """The QuantResult of the lowest-precision assignment found that meets `cfg`'s target."""
    plain = replace(cfg, target_sqnr=None, max_drop=None)
    result = quantize(plain)
    source, where = check_source(result.canonical, result.data_spec or _noise_spec(cfg),
                                 cfg.calib_size, check_data, CHECK_SAMPLES)
    checker = _Checker(result.canonical, list(batches(source, 8, input_shape_name(
        result.canonical))))
    first = checker.fidelity(result.model)
    steps = [_step("none", 0, first)]
    low = [w.node for w in result.plan.weights if w.bits < 8]
    ranking: list[tuple[str, float]] = []
    if not first.meets(cfg) and low:
        ranking = rank(result, low, checker, cfg.rank_by)
        order = [n for n, _ in ranking]
        result = _search(quantize, cfg, order, checker, steps, "8") or \
            _search(quantize, cfg, order, checker, steps, "float") or result
    final = checker.fidelity(result.model)
    # the sidecar's config: the chosen layer_bits/skip with the target that chose them
    result.config = replace(result.config, target_sqnr=cfg.target_sqnr, max_drop=cfg.max_drop)
    result.mixed_precision = _record(cfg, result, ranking, steps, final, where)
    _log(result.mixed_precision)
    return result


def _search(quantize: Quantize, cfg: QuantConfig, order: list[str], checker: _Checker,
            steps: list, how: str):
    """Bisection on k: the first k Linears of `order` at 8 bits (`how` "8"), or all at 8 and the
    first k float ("float"); the result of the smallest k meeting `cfg`, None if even all miss."""
    plain = replace(cfg, target_sqnr=None, max_drop=None)

    def build(k: int):
        names = tuple(_glob(n) for n in order[:k])
        if how == "8":
            probe = replace(plain, layer_bits=tuple((n, 8) for n in names) + plain.layer_bits)
        else:
            probe = replace(plain, layer_bits=tuple((_glob(n), 8) for n in order)
                            + plain.layer_bits, skip=plain.skip + names)
        result = quantize(probe)
        fid = checker.fidelity(result.model)
        steps.append(_step(how, k, fid))
        return result, fid.meets(cfg)

    best, ok = build(len(order))
    if not ok:
        return None
    lo, hi = 0, len(order)  # k = lo misses (the step before), k = hi meets
    while hi - lo > 1:
        mid = (lo + hi) // 2
        result, ok = build(mid)
        if ok:
            hi, best = mid, result
        else:
            lo = mid
    return best


def rank(result, layers: list[str], checker: _Checker, how: str) -> list[tuple[str, float]]:
    """(Linear, score) most sensitive first: output SQNR with it alone put back to FP32
    (higher is more sensitive), or the nuclear norm of its FP32 output."""
    if how == "nuclear":
        scores = _nuclear(result.canonical, layers, checker.feeds)
    else:
        every = {n.name for n in result.canonical.graph.node}
        scores = {}
        for node in layers:
            reverted = keep_quantized(result.model, result.canonical,
                                      every - _linear_nodes(result.canonical, node))
            scores[node] = checker.fidelity(reverted).sqnr_db
    return sorted(scores.items(), key=lambda kv: -kv[1])


def _linear_nodes(canonical: onnx.ModelProto, node: str) -> set[str]:
    """The Linear's node and the bias Add reading its output (lowered together into one op)."""
    out = next(n.output[0] for n in canonical.graph.node if n.name == node)
    return {node} | {n.name for n in canonical.graph.node if n.op_type == "Add" and out in n.input}


def _nuclear(canonical: onnx.ModelProto, layers: list[str], feeds: list[dict]) -> dict:
    outs = {n.name: n.output[0] for n in canonical.graph.node if n.name in layers}
    sess = make_session(expose(canonical, list(outs.values())))
    names = list(outs.values())
    got = sess.run(names, feeds[0])
    scores = {}
    for (node, _), y in zip(outs.items(), got, strict=True):
        y = np.asarray(y, np.float64)
        per = y.reshape(y.shape[0], -1, y.shape[-1])[:NUCLEAR_SAMPLES]
        scores[node] = float(np.mean([np.linalg.svd(m, compute_uv=False).sum() for m in per]))
    return scores


def _glob(name: str) -> str:
    """A node name as an fnmatch pattern that matches only itself."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _step(how: str, k: int, fid: Fidelity) -> dict:
    return {"raised": how, "layers": k, "sqnr_db": round(fid.sqnr_db, 3),
            "agreement": round(fid.agreement, 4)}


def _noise_spec(cfg: QuantConfig):
    from onnxvq.calibrate.spec import DataSpec

    return DataSpec.coerce(None).with_(seed=cfg.seed)


def _record(cfg: QuantConfig, result, ranking, steps, final: Fidelity, where: str) -> dict:
    bits = {w.node: w.bits for w in result.plan.weights}
    skipped = dict(result.plan.skipped)
    layers = {n: bits.get(n, "float" if n in skipped else None) for n, _ in ranking} or bits
    return {"target": {"sqnr_db": cfg.target_sqnr, "max_drop": cfg.max_drop},
            "rank_by": cfg.rank_by, "check": where,
            "ranking": [{"node": n, "score": round(s, 4)} for n, s in ranking],
            "layers": {**bits, **{n: v for n, v in layers.items() if v is not None}},
            "raised": [n for n, _ in ranking if layers.get(n) in (8, "float")],
            "steps": steps, "sqnr_db": round(final.sqnr_db, 3),
            "agreement": round(final.agreement, 4), "met": final.meets(cfg)}


def _log(record: dict) -> None:
    for node in record["raised"]:
        log.info("mixed precision: %s at %s bits", node, record["layers"][node])
    (log.info if record["met"] else log.warning)(
        "mixed precision: %d Linears raised; output SQNR %.1f dB, agreement %.1f %% (%s)",
        len(record["raised"]), record["sqnr_db"], 100 * record["agreement"],
        "target met" if record["met"] else "TARGET NOT MET even with them float")
