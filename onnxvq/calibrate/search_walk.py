"""Which candidates a search evaluates for one parameter, and in what order.

Candidates lie on a grid ordered from the widest range (or largest step) to the narrowest:
activation ranges `[min, max] x f` (ACT_FACTORS), weight clipping `max|w_c| x f`
(WEIGHT_FACTORS), GELU twin positive steps over ACT_FACTORS; the current choice (the base
observer's range on the first round) is put in its place on the grid. The loss is close to
unimodal along the grid, so the walk starts at the current choice, steps towards narrower ranges
while that improves, and towards wider ones only when narrowing did not; it stops `patience`
evaluations after the last improvement. Starting at OMSE's choice instead of at the full range
skips the wide candidates that OMSE has already ruled out (measured: about a third fewer
evaluations than the earlier scan from f = 1). Softmax twin steps (m = 0..8 shifts) are few and
not unimodal: all are evaluated.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxvq.calibrate.blockgraph import QuantBlock, TwinParam, WeightParam, weight_amax
from onnxvq.calibrate.twin import gelu_candidates, softmax_candidates

# The finer grids: the coarse (1, .8, .65, .5, .4, .3, .22, .15) / (1, .9, ..., .5) ones ran 30 %
# faster but gave cct_cifar10 W4/A4 44.80 % instead of 46.80 %.
ACT_FACTORS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.42, 0.35, 0.3, 0.25, 0.2, 0.15)
WEIGHT_FACTORS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.5)


def search_param(p, qb: QuantBlock, state, full, score: Callable[[str], float],
                 layer: str) -> None:
    """Set `state`'s choice for parameter `p` to the best candidate found by `walk`."""
    if isinstance(p, TwinParam):
        rng = full[p.tensor]
        if p.kind == "softmax":
            grid = softmax_candidates(rng[1], p.bits)
            cands, start = place(grid, state.twins[p.tensor], lambda c: c[0])
            patience = len(cands)
        else:
            grid = gelu_candidates(rng[0], rng[1], p.bits, ACT_FACTORS)
            cands, start = place(grid, state.twins[p.tensor], lambda c: c[1])
            patience = 2
        state.twins[p.tensor] = walk(cands, start, lambda c: state.twins.__setitem__(
            p.tensor, c), score, layer, patience)
    elif isinstance(p, WeightParam):
        grid = [wscale(qb, p, f) for f in WEIGHT_FACTORS]
        cands, start = place(grid, state.weight_scales[p.node], lambda c: float(np.sum(c)))
        state.weight_scales[p.node] = walk(cands, start, lambda c: state.weight_scales.__setitem__(
            p.node, c), score, layer)
    else:
        lo, hi = full[p.tensor]
        grid = [(lo * f, hi * f) for f in ACT_FACTORS]
        cands, start = place(grid, state.ranges[p.tensor], lambda c: c[1] - c[0])
        state.ranges[p.tensor] = walk(cands, start, lambda c: state.ranges.__setitem__(
            p.tensor, c), score, layer)


def place(grid: list, current, key: Callable) -> tuple[list, int]:
    """(candidates, index of `current`): `grid` (descending `key`) with `current` in its place,
    or its index when it is already on the grid."""
    for i, c in enumerate(grid):
        if _same(c, current):
            return list(grid), i
    k = key(current)
    i = next((i for i, c in enumerate(grid) if key(c) < k), len(grid))
    return [*grid[:i], current, *grid[i:]], i


def _same(a, b) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


def walk(cands: list, start: int, apply, score, unit: str, patience: int = 2):
    """The lowest-loss candidate found by a local walk from `start` (module docstring)."""
    losses: dict[int, float] = {}

    def at(i: int) -> float:
        if i not in losses:
            apply(cands[i])
            losses[i] = score(unit)
        return losses[i]

    best = start
    at(start)
    for step in (1, -1):
        i, worse = start, 0
        while worse < patience and 0 <= i + step < len(cands):
            i += step
            if at(i) < losses[best]:
                best, worse = i, 0
            else:
                worse += 1
        if best != start and patience < len(cands):  # else: exhaustive, both directions
            break
    apply(cands[best])
    return cands[best]


def wscale(qb: QuantBlock, w: WeightParam, factor: float) -> np.ndarray:
    qmax = 2 ** (w.bits - 1) - 1
    return np.maximum(weight_amax(qb.float_weights[w.node], w.axis) * np.float32(factor)
                      / np.float32(qmax), np.float32(1e-12)).astype(np.float32)
