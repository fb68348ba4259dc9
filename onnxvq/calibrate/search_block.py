"""Block-wise output-error search (the calibration of BRECQ and Q-Diffusion, without gradients).

For each transformer block, coordinate descent over its quantization parameters in graph order:
each activation site's range among `[min, max] x f` (f from 1.0 down to 0.15, plus the base
observer's choice) and each weight's clipping `max|w_c| x f` (f from 1.0 to 0.5), keeping the one
with the lowest mean squared error between the float block output and the quantized block output
on the search subset. See `search.py` for the data flow.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from onnxvq.calibrate.blockgraph import TwinParam
from onnxvq.calibrate.search import Objective


class BlockMse(Objective):
    """Mean squared error of the block output (one number for every parameter of the block)."""

    name = "block-mse"

    def __init__(self, rounds: int = 1):
        self.rounds = rounds

    def outputs(self, qb, layers, node_out) -> list[str]:
        return [qb.output]

    def loss(self, got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray],
             unit: str) -> float:
        (name,) = want
        return mse(got[name], want[name], (self.weights or {}).get(name))

    def fisher_targets(self, qb, node_out) -> list[str]:
        return [qb.output]


class LayerMse(Objective):
    """Mean squared error of the output of the layer a parameter belongs to (the twin method's
    objective); with `fisher=True` the twin sites' layers weight it by the Fisher estimate
    (PTQ4ViT's Hessian-guided metric, with weights that are not ~0)."""

    name = "twin"
    layerwise = True

    def __init__(self, rounds: int = 1):
        self.rounds = rounds
        self.node_out: dict[str, str] = {}

    def outputs(self, qb, layers, node_out) -> list[str]:
        self.node_out.update((n, node_out[n]) for n in layers)
        return [node_out[n] for n in layers]

    def reads(self, unit: str, names: list[str]) -> list[str]:
        return [self.node_out[unit]]

    def loss(self, got, want, unit: str) -> float:
        name = self.node_out[unit]
        return mse(got[name], want[name], (self.weights or {}).get(name))

    def fisher_targets(self, qb, node_out) -> list[str]:
        """The twin sites' consuming layers (A·V, fc2): PTQ4ViT's Hessian-guided outputs."""
        return [node_out[c] for a in qb.acts if isinstance(a, TwinParam) for c in a.consumers]


def mse(got: np.ndarray, want: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Mean (weighted) squared difference; float32 and a BLAS dot (the float64 copy of a
    32-image block output cost as much as a third of the candidate's ORT run)."""
    d = got - want
    if weight is not None:
        d = d * np.sqrt(weight)
    d = d.ravel()
    return float(np.dot(d, d)) / max(d.size, 1)
