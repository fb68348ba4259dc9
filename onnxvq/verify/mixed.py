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
   if all at 8 bits still miss, keep the first k float (`skip`) the same way. The units ranked
   are the Linears below 8 bits and the attentions whose Q·Kᵀ/A·V inputs are (both MatMuls
   raised together; their nuclear-norm prior is that of the attention probabilities).

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


@dataclass(frozen=True)
class Unit:
    """What one step raises: a Linear (weights + input), or an attention's two MatMuls."""

    name: str  # the Linear's node, or the attention's Q·Kᵀ MatMul
    raise_nodes: tuple[str, ...]  # the nodes `layer_bits` / `skip` name
    revert: frozenset[str]  # the canonical nodes put back to FP32 to measure its sensitivity
    probe: str  # the FP32 tensor its nuclear norm is taken of


def units(result) -> list[Unit]:
    """The Linears and attention MatMuls that are below 8 bits in `result`'s plan."""
    canonical, out = result.canonical, {}
    produced = {n.name: n.output[0] for n in canonical.graph.node}
    for w in result.plan.weights:
        if w.bits < 8:
            out[w.node] = Unit(w.node, (w.node,), frozenset(_linear_nodes(canonical, w.node)),
                               produced[w.node])
    site_bits = {c: s.bits for s in result.plan.activations for c in s.consumers}
    for att in result.structure.attentions:
        if min(site_bits.get(att.scores_matmul, 8), site_bits.get(att.context_matmul, 8)) < 8:
            nodes = (att.scores_matmul, att.context_matmul)
            out[att.scores_matmul] = Unit(att.scores_matmul, nodes, frozenset(
                {*nodes, att.softmax, *att.score_nodes}), att.probs)
    return list(out.values())


def mixed_precision(quantize: Quantize, cfg: QuantConfig, check_data=None):
    """The QuantResult of the lowest-precision assignment found that meets `cfg`'s target (the
    most accurate one tried when none does)."""
    result = quantize(replace(cfg, target_sqnr=None, max_drop=None))
    source, where = check_source(result.canonical, result.data_spec or _noise_spec(cfg),
                                 cfg.calib_size, check_data, CHECK_SAMPLES)
    checker = _Checker(result.canonical, list(batches(source, 8, input_shape_name(
        result.canonical))))
    first = checker.fidelity(result.model)
    tried = [(first, result)]
    steps = [_step("none", 0, first)]
    ranking: list[tuple[Unit, float]] = []
    low = units(result)
    if not first.meets(cfg) and low:
        ranking = rank(result, low, checker, cfg.rank_by)
        order = [u for u, _ in ranking]
        found = _search(quantize, cfg, order, checker, steps, "8", tried) or \
            _search(quantize, cfg, order, checker, steps, "float", tried)
        result = found or max(tried, key=lambda t: t[0].sqnr_db)[1]
    final = checker.fidelity(result.model)
    # the sidecar's config: the chosen layer_bits/skip with the target that chose them
    result.config = replace(result.config, target_sqnr=cfg.target_sqnr, max_drop=cfg.max_drop)
    result.mixed_precision = _record(cfg, result, ranking, steps, final, where)
    _log(result.mixed_precision)
    return result


def _search(quantize: Quantize, cfg: QuantConfig, order: list[Unit], checker: _Checker,
            steps: list, how: str, tried: list):
    """Bisection on k: the first k units of `order` at 8 bits (`how` "8"), or all at 8 and the
    first k float ("float"); the result of the smallest k meeting `cfg`, None if even all miss."""
    plain = replace(cfg, target_sqnr=None, max_drop=None)

    def globs(us):
        return tuple(_glob(n) for u in us for n in u.raise_nodes)

    def build(k: int):
        raised = order[:k] if how == "8" else order
        probe = replace(plain, layer_bits=tuple((g, 8) for g in globs(raised))
                        + plain.layer_bits,
                        skip=plain.skip + (globs(order[:k]) if how == "float" else ()))
        result = quantize(probe)
        fid = checker.fidelity(result.model)
        steps.append(_step(how, k, fid))
        tried.append((fid, result))
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


def rank(result, low: list[Unit], checker: _Checker, how: str) -> list[tuple[Unit, float]]:
    """(unit, score) most sensitive first: output SQNR with it alone put back to FP32 (higher
    is more sensitive), or the nuclear norm of its FP32 output (attention: the probabilities)."""
    if how == "nuclear":
        scores = _nuclear(result.canonical, low, checker.feeds)
    else:
        every = {n.name for n in result.canonical.graph.node}
        scores = [checker.fidelity(keep_quantized(result.model, result.canonical,
                                                  every - u.revert)).sqnr_db for u in low]
    return sorted(zip(low, scores, strict=True), key=lambda us: -us[1])


def _linear_nodes(canonical: onnx.ModelProto, node: str) -> set[str]:
    """The Linear's node and the bias Add reading its output (lowered together into one op)."""
    out = next(n.output[0] for n in canonical.graph.node if n.name == node)
    return {node} | {n.name for n in canonical.graph.node if n.op_type == "Add" and out in n.input}


def _nuclear(canonical: onnx.ModelProto, low: list[Unit], feeds: list[dict]) -> list[float]:
    names = list(dict.fromkeys(u.probe for u in low))
    got = dict(zip(names, make_session(expose(canonical, names)).run(names, feeds[0]),
                   strict=True))
    scores = []
    for u in low:
        y = np.asarray(got[u.probe], np.float64)[:NUCLEAR_SAMPLES]
        mats = y.reshape(-1, y.shape[-2], y.shape[-1]) if y.ndim >= 3 else y[None]
        scores.append(float(np.mean([np.linalg.svd(m, compute_uv=False).sum() for m in mats])))
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
    site_bits = {c: s.bits for s in result.plan.activations for c in s.consumers}
    skipped = dict(result.plan.skipped)
    layers = dict(bits)
    for u, _ in ranking:
        layers[u.name] = ("float" if u.name in skipped else
                          bits.get(u.name, site_bits.get(u.name)))
    return {"target": {"sqnr_db": cfg.target_sqnr, "max_drop": cfg.max_drop},
            "rank_by": cfg.rank_by, "check": where,
            "ranking": [{"node": u.name, "score": round(float(sc), 4)} for u, sc in ranking],
            "layers": layers,
            "raised": [u.name for u, _ in ranking if layers.get(u.name) in (8, "float")],
            "steps": steps, "sqnr_db": round(final.sqnr_db, 3),
            "agreement": round(final.agreement, 4), "met": final.meets(cfg)}


def _log(record: dict) -> None:
    for node in record["raised"]:
        log.info("mixed precision: %s at %s bits", node, record["layers"][node])
    (log.info if record["met"] else log.warning)(
        "mixed precision: %d Linears raised; output SQNR %.1f dB, agreement %.1f %% (%s)",
        len(record["raised"]), record["sqnr_db"], 100 * record["agreement"],
        "target met" if record["met"] else "TARGET NOT MET even with them float")
