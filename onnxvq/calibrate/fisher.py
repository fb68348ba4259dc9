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
from dataclasses import dataclass

import numpy as np
import onnx

from onnxvq.calibrate.subgraph import Tail

log = logging.getLogger(__name__)


def group_axis(ndim: int, batch: int | None = 0) -> int:
    """Axis 1 of a batch-first tensor ≥ 3-D (tokens, heads, channels), the first non-batch axis
    of a tokens-first one ([T, N, C]); the non-batch axis of a 2-D one."""
    rest = [i for i in range(ndim) if i != batch]
    return rest[0] if ndim >= 3 else rest[-1]


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
                   ) -> dict[str, FisherGroups]:
    """Per tensor, the raw diagonal Fisher per group; `ref` holds the graph input (at least 2
    samples); each tensor's layout (where its batch axis is) is found by
    running the upstream part on 1 and on 2 samples."""
    typed = onnx.shape_inference.infer_shapes(model)
    inp, logits = model.graph.input[0].name, model.graph.output[0].name
    head_inputs = [i.name for i in typed.graph.input]
    x = ref[inp][:max(samples, 2)]
    rng = np.random.default_rng(seed)
    out = {}
    for t in dict.fromkeys(tensors):
        if t == logits:
            continue
        tail = Tail(typed, [t], [logits])
        head = Tail(typed, head_inputs, [f for f in tail.frontier if f != inp])
        axes = _batch_axes(head, inp, x)
        front = dict(zip(head.outputs, head.session.run(head.outputs, {inp: x[:samples]}),
                         strict=True))
        if inp in tail.feeds:
            front[inp], axes[inp] = x[:samples], (0, 1)
        out[t] = _probe(tail, front, axes, t, logits, groups, probes, eps, rng)
    return out


@dataclass(frozen=True)
class FisherGroups:
    raw: np.ndarray  # mean diagonal Fisher per group
    axis: int  # the axis the groups slice
    ndim: int
    size: int  # the tensor's length on that axis


def _batch_axes(head: Tail, inp: str, x: np.ndarray) -> dict[str, tuple[int, int] | None]:
    """(axis, rows per sample) of each head output: the axis that grows from 1 to 2 samples,
    by 1 row per sample or by m (a batch merged with heads, [N·H, T, d]); None: no batch axis."""
    one, two = (head.session.run(head.outputs, {inp: x[:k]}) for k in (1, 2))
    axes = {}
    for name, a, b in zip(head.outputs, one, two, strict=True):
        diff = [i for i, (p, q) in enumerate(zip(a.shape, b.shape, strict=True)) if p != q]
        axes[name] = (diff[0], a.shape[diff[0]]) if diff else None
    return axes


def _sample(v: np.ndarray, ax, s: int, copies: int) -> np.ndarray:
    """Sample `s` of `v` repeated `copies` times along its batch axis (whole when none)."""
    if ax is None:
        return v
    axis, m = ax
    one = np.take(v, range(s * m, (s + 1) * m), axis=axis)
    return np.concatenate([one] * copies, axis=axis) if copies > 1 else one


def _probe(tail: Tail, front: Mapping[str, np.ndarray], axes, t: str, logits: str, groups: int,
           probes: int, eps: float, rng) -> np.ndarray:
    o, (b_axis, m) = front[t], axes[t]
    g_axis = group_axis(o.ndim, b_axis)
    parts = chunks(o.shape[g_axis], groups)
    copies = len(parts) * probes
    acc = np.zeros(len(parts))
    n = o.shape[b_axis] // m
    for s in range(n):
        p = tail.session.run([logits], {k: _sample(v, axes[k], s, 1)
                                        for k, v in front.items()})[0]
        o_s = _sample(o, axes[t], s, 1)
        delta = eps * float(np.sqrt(np.mean(o_s.astype(np.float64) ** 2)))
        batch = _sample(o, axes[t], s, copies)
        for j, g in enumerate(parts):
            for r in range(probes):
                idx = [slice(None)] * o.ndim
                c = j * probes + r
                idx[b_axis], idx[g_axis] = slice(c * m, (c + 1) * m), g
                view = batch[tuple(idx)]
                view += (delta * rng.choice((-1.0, 1.0), view.shape)).astype(np.float32)
        feeds = {k: _sample(v, axes[k], s, copies) for k, v in front.items() if k != t}
        q = tail.session.run([logits], {**feeds, t: batch})[0]
        kl = _kl(np.repeat(p, copies, axis=0), q).reshape(len(parts), probes).mean(1)
        size = np.array([o_s[tuple(slice(None) if i != g_axis else g for i in range(o.ndim))]
                         .size for g in parts], np.float64)
        acc += 2 * kl / (delta ** 2 * size) if delta > 0 else 0.0
    return FisherGroups(acc / n, g_axis, o.ndim, o.shape[g_axis])


def normalised(found: Mapping[str, FisherGroups]) -> dict[str, np.ndarray]:
    """Weights broadcastable against each tensor (its group axis), mean 1 over the elements."""
    out = {}
    for t, f in found.items():
        w = np.zeros(f.size)
        for g, val in zip(chunks(f.size, len(f.raw)), f.raw, strict=True):
            w[g] = val
        mean = w.mean()
        if not mean > 0:
            log.warning("Fisher weights of %s are all 0: left unweighted", t)
            continue
        shape = [1] * f.ndim
        shape[f.axis] = f.size
        out[t] = (w / mean).astype(np.float32).reshape(shape)
    return out
