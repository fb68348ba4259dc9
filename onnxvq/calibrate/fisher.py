"""Fisher weights for the search metrics, from the float model's output sensitivity (no autograd).

PTQ4ViT weights a layer's output error by the squared gradient of the task loss; its reference
takes that gradient between two identical networks, so the weights are ~0. Here the Fisher
information of the model's class distribution is estimated with forward runs only: perturbing a
layer output O by a small v changes the float model's class probabilities p by
`KL(p || p(O + v)) ≈ ½ vᵀ F v` (the first-order term vanishes at v = 0), and with random signs
on a group g of O's elements (`v = δ·r·1_g`, r = ±1) the expectation of `vᵀ F v` is
`δ² Σ_{i in g} F_ii`, the diagonal Fisher of that group: `F̄_g = 2 KL / (δ² |g|)`.

Groups are slices of axis 1 (tokens of a [N, T, C] tensor, heads of [N, H, T, d], channels of a
convolution's [N, C, H, W]; the last axis of a 2-D tensor), at most `groups` contiguous chunks.
Each group is probed `probes` times on each of `samples` calibration samples, all of one sample's
probes in one batched run of the part of the float model downstream of O (`subgraph.Tail`, fed
the tensors it reads from upstream). The weights are normalised to mean 1, so an objective's
`mean(w · (Ô - O)²)` has the scale of the plain MSE.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np
import onnx

from onnxvq.calibrate.subgraph import Tail, run_batched

log = logging.getLogger(__name__)


def group_axis(ndim: int) -> int:
    return 1 if ndim >= 3 else ndim - 1


def chunks(size: int, groups: int) -> list[slice]:
    edges = np.linspace(0, size, min(groups, size) + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(p || q) per row of softmax(logits) (float64; last axis = classes)."""
    def logsm(z):
        z = z.astype(np.float64).reshape(len(z), -1)
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))
    lp, lq = logsm(p_logits), logsm(q_logits)
    return (np.exp(lp) * (lp - lq)).sum(1)


def fisher_weights(model: onnx.ModelProto, tensors: Iterable[str],
                   ref: Mapping[str, np.ndarray], *, samples: int = 4, groups: int = 16,
                   probes: int = 2, eps: float = 0.05, seed: int = 0,
                   ) -> dict[str, np.ndarray]:
    """Per tensor, the raw diagonal Fisher per group (shape [groups]); `ref` holds the graph
    input and the float tensors of the same images (from the float model)."""
    typed = onnx.shape_inference.infer_shapes(model)
    inp, logits = model.graph.input[0].name, model.graph.output[0].name
    head_inputs = [i.name for i in typed.graph.input]
    x = ref[inp][:samples]
    rng = np.random.default_rng(seed)
    out = {}
    for t in dict.fromkeys(tensors):
        if t == logits or t not in ref:
            continue
        tail = Tail(typed, [t], [logits])
        others = [f for f in tail.frontier if f != t]
        head = Tail(typed, head_inputs, [t, *others]) if others else None
        front = run_batched(head.session, head.outputs, {}, {inp: x}, len(x), len(x)) \
            if head is not None else {t: ref[t][:samples]}
        if inp in tail.feeds:
            front[inp] = x
        out[t] = _probe(tail, front, t, logits, groups, probes, eps, rng)
    return out


def _probe(tail: Tail, front: Mapping[str, np.ndarray], t: str, logits: str, groups: int,
           probes: int, eps: float, rng) -> np.ndarray:
    o = front[t]
    axis = group_axis(o.ndim)
    parts = chunks(o.shape[axis], groups)
    acc = np.zeros(len(parts))
    for s in range(len(o)):
        base = {k: v[s:s + 1] for k, v in front.items()}
        p = tail.session.run([logits], base)[0]
        delta = eps * float(np.sqrt(np.mean(o[s].astype(np.float64) ** 2)))
        batch = np.repeat(o[s:s + 1], len(parts) * probes, axis=0)
        sizes = []
        for j, g in enumerate(parts):
            idx = [slice(None)] * o.ndim
            idx[axis] = g
            view = batch[j * probes:(j + 1) * probes][tuple(idx)]
            view += (delta * rng.choice((-1.0, 1.0), view.shape)).astype(np.float32)
            sizes.append(view[0].size)
        feeds = {k: np.repeat(v, len(batch), axis=0) for k, v in base.items() if k != t}
        q = tail.session.run([logits], {**feeds, t: batch})[0]
        kl = _kl(np.repeat(p, len(batch), axis=0), q).reshape(len(parts), probes).mean(1)
        acc += 2 * kl / (delta ** 2 * np.asarray(sizes, np.float64)) if delta > 0 else 0.0
    return acc / len(o)


def normalised(raw: Mapping[str, np.ndarray], shapes: Mapping[str, tuple]) -> dict:
    """Weights broadcastable against each tensor (its group axis), mean 1 over the elements."""
    out = {}
    for t, f in raw.items():
        shape = shapes[t]
        axis = group_axis(len(shape))
        w = np.zeros(shape[axis])
        for g, val in zip(chunks(shape[axis], len(f)), f, strict=True):
            w[g] = val
        mean = w.mean()
        if not mean > 0:
            log.warning("Fisher weights of %s are all 0: left unweighted", t)
            continue
        bshape = [1] * len(shape)
        bshape[axis] = shape[axis]
        out[t] = (w / mean).astype(np.float32).reshape(bshape)
    return out
