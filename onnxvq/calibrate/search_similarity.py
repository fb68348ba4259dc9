"""PTQ-for-ViT (Liu et al. 2021): per layer, scales that keep the layer's output most similar.

For each layer of a block (weighted MatMul/Gemm, Q·Kᵀ, A·V), in graph order, alternately search
its input scale(s) with the weight fixed and its weight clipping with the inputs fixed, `rounds`
times, maximising the Pearson correlation between the float layer output (the FP32 model's) and the
quantized one (block run on the quantized block input). For the attention scores (Q·Kᵀ output) a
ranking loss is added: over fixed pairs of keys per query row, the hinge `max(0, -(Â_i - Â_j) *
sign(A_i - A_j))`, normalised by the scores' standard deviation, so that the order of the attention
logits is kept (`rank_weight`, default 0.1 as the paper's gamma).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from onnxvq.calibrate.search import Objective

_PAIRS = 32  # key pairs per query row (fixed, seeded: deterministic)


class Similarity(Objective):
    name = "similarity"
    layerwise = True

    def __init__(self, rounds: int = 2, rank_weight: float = 0.1, seed: int = 0):
        self.rounds, self.rank_weight, self.seed = rounds, rank_weight, seed
        self.node_out: dict[str, str] = {}
        self.scores_nodes: set[str] = set()

    def outputs(self, qb, layers, node_out) -> list[str]:
        self.node_out.update((n, node_out[n]) for n in layers)
        return [node_out[n] for n in layers]

    def reads(self, unit: str, names: list[str]) -> list[str]:
        return [self.node_out[unit]]

    def loss(self, got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray],
             unit: str) -> float:
        name = self.node_out[unit]
        a, b = want[name], got[name]
        loss = -pearson(a, b)
        if unit in self.scores_nodes and self.rank_weight:
            loss += self.rank_weight * ranking_loss(a, b, self.seed)
        return loss


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over samples of the Pearson correlation of the flattened per-sample outputs."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    # a constant output (a dead attention) is reproduced exactly by any scale: correlation 1
    r = np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1.0), 1.0)
    return float(r.mean())


def ranking_loss(a: np.ndarray, b: np.ndarray, seed: int = 0) -> float:
    """Hinge on the order of fixed key pairs along the last axis (attention logits per query)."""
    keys = a.shape[-1]
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, keys, _PAIRS), rng.integers(0, keys, _PAIRS)
    sign = np.sign(a[..., i] - a[..., j])
    viol = np.maximum(0.0, -(b[..., i] - b[..., j]) * sign)
    std = float(a.std())
    return float(viol.mean() / std) if std > 0 else 0.0
