"""Search calibrators: choose each transformer block's scales by what its quantized output does.

The base observer (OMSE) calibrates every site over all calibration data first; the search then
refines, block by block, the activation ranges and weight clipping of the sites inside each block
on an evenly strided subset of the calibration data (`search_samples`, default 32: memory and time
do not grow with `calib_size`). Each block is sliced and fake-quantized once (`blockgraph`); a
candidate is a different set of scale feeds to the same session. Blocks run in order and each one
reads the previous quantized block's output (BRECQ's "quantized input, float target"), so a block
compensates the error that reaches it. The objective is pluggable: `search_block` (block output
MSE) and `search_similarity` (PTQ-for-ViT: Pearson correlation of each layer's output, with a
ranking loss on attention scores).
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxvq.calibrate.blockgraph import (
    ActParam,
    QuantBlock,
    TwinParam,
    WeightParam,
    block_bounds,
    slice_block,
)
from onnxvq.calibrate.collect import expose
from onnxvq.calibrate.data import strided
from onnxvq.calibrate.fisher import fisher_weights, normalised
from onnxvq.calibrate.quant import qparams_from_range
from onnxvq.calibrate.search_walk import search_param, wscale
from onnxvq.calibrate.subgraph import Tail, run_batched
from onnxvq.calibrate.twin import gelu_candidates, softmax_candidates
from onnxvq.core.runtime import make_session
from onnxvq.recognise.structure import ViTStructure

log = logging.getLogger(__name__)


@dataclass
class SearchState:
    """Current choice: activation (lo, hi) per tensor and weight scales per node."""

    ranges: dict[str, tuple[float, float]]
    weight_scales: dict[str, np.ndarray] = field(default_factory=dict)
    twins: dict[str, tuple[float, float]] = field(default_factory=dict)  # (low, high) steps
    trace: list[dict] = field(default_factory=list)
    fisher: dict[str, dict] = field(default_factory=dict)  # per weighted tensor: a summary


class Objective(ABC):
    """What a search minimises. `outputs(qb)` names the tensors it reads; `loss(got, want, unit)`
    scores one candidate, `unit` being the layer node the candidate belongs to."""

    name = "?"
    rounds = 1
    layerwise = False  # True: the block graph also exposes every parameter-owning layer's output
    weights: Mapping[str, np.ndarray] | None = None  # Fisher weights per output (`fisher.py`)

    def fisher_targets(self, qb: QuantBlock, node_out: Mapping[str, str]) -> list[str]:
        """The outputs whose error `fisher=True` weights (none: the option does nothing)."""
        return []

    @abstractmethod
    def outputs(self, qb: QuantBlock, layers: list[str], node_out: Mapping[str, str]) -> list[str]:
        ...

    def reads(self, unit: str, names: list[str]) -> list[str]:
        """The outputs `loss(.., unit)` reads (all of `outputs` unless narrower)."""
        return names

    @abstractmethod
    def loss(self, got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray],
             unit: str) -> float:
        ...


def strided_subset(batches: Iterable[Mapping[str, np.ndarray]], total: int, n: int,
                   input_name: str) -> np.ndarray:
    """The evenly strided `n` of `total` samples (class balanced on a sorted ImageFolder)."""
    want = set(strided(total, n).tolist())
    picked, offset = [], 0
    for feeds in batches:
        x = feeds[input_name]
        idx = [i for i in range(len(x)) if offset + i in want]
        if idx:
            picked.append(x[idx])
        offset += len(x)
    return np.concatenate(picked)


def run_chunks(sess, names: list[str], feeds: Mapping[str, np.ndarray], inp: str, x: np.ndarray,
               batch: int) -> dict[str, np.ndarray]:
    if batch >= len(x):  # one run: outputs need not have the batch on axis 0
        return dict(zip(names, sess.run(names, {**feeds, inp: x}), strict=True))
    parts: dict[str, list] = {n: [] for n in names}
    for i in range(0, len(x), batch):
        outs = sess.run(names, {**feeds, inp: x[i:i + batch]})
        for n, o in zip(names, outs, strict=True):
            parts[n].append(o)
    return {n: np.concatenate(v) for n, v in parts.items()}


class FloatChain:
    """The float model's tensors, one search unit at a time: a unit's float input is the previous
    unit's float output (where the chain breaks, one run of the model up to it) and only that
    unit's subgraph runs, so the search holds one block's references, never the model's (all of
    them at once peaked at 5.8 GB on DeiT-S with the layer-wise objectives)."""

    def __init__(self, model: onnx.ModelProto, images: np.ndarray):
        self.model, self.images = model, images
        self.inp = model.graph.input[0].name
        self.known = {self.inp: images}

    def unit(self, b_in: str, b_out: str, names: Iterable[str]) -> dict[str, np.ndarray]:
        """Float values of `b_in`, `b_out` and `names` (tensors of the unit's subgraph)."""
        x = self.known.get(b_in)
        if x is None:
            x = self._run(self.model, self.inp, self.images, [b_in])[b_in]
        wanted = [n for n in dict.fromkeys([*names, b_out]) if n != b_in]
        out = self._run(slice_block(self.model, b_in, b_out), b_in, x, wanted)
        out[b_in] = x
        self.known = {self.inp: self.images, b_out: out[b_out]}
        return out

    @staticmethod
    def _run(model: onnx.ModelProto, inp: str, x: np.ndarray, names: list[str],
             ) -> dict[str, np.ndarray]:
        # one run of all samples: an export may keep tokens first ([T, N, C],
        # torch.nn.TransformerEncoderLayer), so tensors cannot be chunked on axis 0
        sess = make_session(expose(model, names), arena=False)
        return run_chunks(sess, names, {}, inp, x, len(x))


def search_scales(model: onnx.ModelProto, structure: ViTStructure, plan, cfg, images: np.ndarray,
                  ranges: Mapping[str, tuple[float, float]],
                  full: Mapping[str, tuple[float, float]], objective: Objective,
                  progress: Callable[[str], None] | None = None,
                  twins: Mapping[str, str] | None = None) -> SearchState:
    """Refine `ranges` (the base observer's, per activation tensor) and weight clipping of every
    block's sites; `full` holds each tensor's observed min/max (the candidates' 100 %)."""
    inp = model.graph.input[0].name
    state = SearchState(dict(ranges))
    nodes = {n.name: n for n in model.graph.node}
    node_out = {n.name: n.output[0] for n in model.graph.node}
    units = _block_units(model, structure, plan, cfg, objective, nodes, node_out, twins or {})
    if cfg.fisher:
        _fisher(model, units, objective, {inp: images}, node_out, state)
    floats = FloatChain(model, images)
    x_q, prev_out = None, None
    for k, (b_in, b_out, qb) in enumerate(units):
        t0 = time.perf_counter()
        layers = _layers(qb, nodes)
        names = objective.outputs(qb, layers, node_out)
        ref = floats.unit(b_in, b_out, names)
        x = x_q if (x_q is not None and prev_out == b_in) else ref[b_in]
        sess = make_session(qb.model, arena=False)
        want = {n: ref[n] for n in names if n in ref}
        _search_block(qb, x, names, want, layers, state, full, objective, cfg)
        x_q = run_chunks(sess, [qb.output], _feeds(qb, state), qb.input, x, len(x))[qb.output]
        prev_out = b_out
        err = float(np.mean((x_q - ref[b_out]) ** 2) / max(np.mean(ref[b_out] ** 2), 1e-30))
        state.trace.append({"block": k, "relative_mse": err,
                            "seconds": round(time.perf_counter() - t0, 2)})
        log.info("%s search: block %d/%d, relative output MSE %.4g (%.1f s)", objective.name,
                 k + 1, len(units), err, time.perf_counter() - t0)
        if progress is not None:
            progress(f"block {k + 1}/{len(units)}")
    return state


def _fisher(model, units, objective: Objective, ref, node_out, state: SearchState) -> None:
    """Set `objective.weights` from the float model's output sensitivity (`fisher.py`)."""
    t0 = time.perf_counter()
    targets = [t for u in units for t in objective.fisher_targets(u[2], node_out)]
    raw = fisher_weights(model, targets, ref)
    objective.weights = normalised(raw)
    for t, f in raw.items():
        w = objective.weights.get(t)
        state.fisher[t] = {"raw_mean": float(np.mean(f.raw)), "min_weight": float(w.min()),
                           "max_weight": float(w.max())} if w is not None else {"raw_mean": 0.0}
    log.info("Fisher weights of %d tensors (%.1f s)", len(raw), time.perf_counter() - t0)


def _block_units(model, structure, plan, cfg, objective, nodes, node_out, twins,
                 ) -> list[tuple[str, str, QuantBlock]]:
    """(input, output, fake-quantized block) per block, plus the stem (graph input to the first
    block: patch embedding) and the tail (last block to the logits: head) when they are clean."""
    bounds = [block_bounds(b, model) for b in structure.blocks]
    bounds = [b for b in bounds if b is not None]
    if bounds:
        bounds = [(model.graph.input[0].name, bounds[0][0]), *bounds,
                  (bounds[-1][1], model.graph.output[0].name)]
    units = []
    for b_in, b_out in bounds:
        sliced = slice_block(model, b_in, b_out) if b_in != b_out else None
        if sliced is None:
            log.warning("%s -> %s is not a clean subgraph: its sites keep the base ranges",
                        b_in, b_out)
            continue
        names = {n.name for n in sliced.graph.node}
        acts = [TwinParam(s.tensor, s.consumers, s.bits, twins[s.tensor]) if s.tensor in twins
                else ActParam(s.tensor, s.consumers, s.bits, cfg.symmetric, cfg.symmetric, s.role)
                for s in plan.activations if any(c in names for c in s.consumers)]
        weights = [WeightParam(w.node, w.weight, w.axis, w.bits)
                   for w in plan.weights if w.node in names]
        if not acts and not weights:
            continue
        qb = QuantBlock(sliced, acts, weights)
        if objective.layerwise:
            qb = QuantBlock(sliced, acts, weights, [node_out[n] for n in _layers(qb, nodes)])
        units.append((b_in, b_out, qb))
    return units


def _layers(qb: QuantBlock, nodes) -> list[str]:
    """Nodes owning a parameter, in graph order: weighted nodes and activation consumers."""
    owners = {w.node for w in qb.weights} | {c for a in qb.acts for c in a.consumers}
    return [n for n in nodes if n in owners]


def _feeds(qb: QuantBlock, state: SearchState, only=None) -> dict[str, np.ndarray]:
    return qb.feeds({a.tensor: state.twins[a.tensor] if isinstance(a, TwinParam)
                     else _qp(a, state.ranges[a.tensor]) for a in qb.acts}, state.weight_scales,
                    only)


def _qp(a: ActParam, rng: tuple[float, float]) -> tuple[float, float]:
    s, z = qparams_from_range(*rng, a.bits, symmetric=a.symmetric, signed=a.signed)
    return float(s), float(z)


def _search_block(qb, x, names, want, layers, state, full, objective, cfg) -> None:
    for w in qb.weights:
        state.weight_scales.setdefault(w.node, wscale(qb, w, 1.0))
    for a in qb.acts:  # twin sites start as the base observer's range, uniformly coded
        if isinstance(a, TwinParam) and a.tensor not in state.twins:
            lo, hi = state.ranges[a.tensor]
            state.twins[a.tensor] = (softmax_candidates(hi, a.bits)[0] if a.kind == "softmax"
                                     else gelu_candidates(full[a.tensor][0], hi, a.bits, (1,))[0])
    owned = {layer: ([a for a in qb.acts if a.consumers[0] == layer],
                     [w for w in qb.weights if w.node == layer]) for layer in layers}
    typed = onnx.shape_inference.infer_shapes(qb.model)
    inputs = [i.name for i in typed.graph.input]
    tails = {}
    for layer in layers:
        for p in (*owned[layer][0], *owned[layer][1]):
            tail = Tail(typed, _param_inputs(p), objective.reads(layer, names))
            # the frontier from the nodes upstream of it only (not the whole block)
            head = Tail(typed, inputs, tail.frontier) if tail.frontier else None
            tails[layer, p] = (tail, head)
    for _ in range(objective.rounds):
        for layer in layers:
            for p in (*owned[layer][0], *owned[layer][1]):
                score = _scorer(*tails[layer, p], qb, x, want, state, objective, cfg)
                search_param(p, qb, state, full, score, layer)


def _run_part(part: Tail, qb, x, state, front, cfg) -> dict[str, np.ndarray]:
    params = [f for f in part.feeds if f != qb.input]
    feeds = _feeds(qb, state, {f.rsplit("/", 1)[0] for f in params})  # "<owner>/fq_..."
    batched = {**front, qb.input: x} if qb.input in part.feeds else front
    return run_batched(part.session, part.outputs, {k: feeds[k] for k in params}, batched,
                       len(x), len(x))  # one batch: see search_scales


def _scorer(tail: Tail, head: Tail | None, qb, x, want, state, objective,
            cfg) -> Callable[[str], float]:
    """loss(unit) of the current state, running only `tail` on a frontier computed once now
    (with the current choice of every other parameter: the same for all of this one's
    candidates)."""
    front = _run_part(head, qb, x, state, {}, cfg) if head is not None else {}

    def score(unit: str) -> float:
        return objective.loss(_run_part(tail, qb, x, state, front, cfg), want, unit)
    return score


def _param_inputs(p) -> list[str]:
    """The QuantBlock graph inputs one parameter feeds (`blockgraph.QuantBlock.feeds`)."""
    if isinstance(p, WeightParam):
        return [f"{p.node}/fq_weight"]
    if isinstance(p, TwinParam):
        return [f"{p.tensor}/fq_low", f"{p.tensor}/fq_high", f"{p.tensor}/fq_split"]
    return [f"{p.tensor}/fq_scale", f"{p.tensor}/fq_lo", f"{p.tensor}/fq_hi"]
