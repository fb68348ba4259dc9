"""PTS's blind spot: tokens whose LayerNorm input is far narrower than the layer-wise range.

PTS quantizes a LayerNorm input with one layer-wise step `s` (per-channel powers of two on top).
A token whose values span only a few steps is coded as nearly one value, and IntLayerNorm turns
a row of equal codes into beta alone: the token's content is gone. Random-weight DINOv2 with
registers shows it: the class and register tokens start at ~1e-6 (timm's init) and layer-scale
keeps them small while the patch tokens span +-3, so every block's IntLayerNorm returned beta
for the class token and the head's output no longer depended on the image. Such a LayerNorm is
refused for PTS (it keeps float) instead of being written broken.
"""

from __future__ import annotations

import numpy as np

from onnxvq.calibrate.pts import PtsErrorObserver, pts_candidate_scales
from onnxvq.calibrate.quant import fake_quant, qrange
from onnxvq.core.metrics import sqnr

# A row spanning under one layer-wise step is coded as at most two values: IntLayerNorm then
# returns beta or noise for it. Measured narrowest tokens (random weights, noise calibration):
# DINOv2 reg4 2e-4..0.93 steps; DeiT-III 3e-4..1.2 (its final norm, kept integer at 1.2 steps,
# alone costs 0.9 dB and the fidelity gate refuses it); the tiny test ViTs 1.0..4.9 (11 dB).
MIN_ROW_STEPS = 1.0


# A LayerNorm whose output the head reads at a few tokens only (the final norm before class-token
# pooling): those tokens alone carry the model's output, so PTS must keep them, not the layer on
# average. Measured (6 noise samples, LayerNorm of the PTS-coded input vs of the float input, at
# the pooled token): DeiT-III -0.4 dB and CaiT 11.7 dB (their random-weight class tokens span 1.2
# and 5.4 steps; both failed the gate); distilled DeiT 27 dB, the tiny test ViT 26 dB, timm
# DeiT-T 34 dB, HF ViT-T 35 dB (all pass it).
MIN_POOLED_SQNR_DB = 20.0


class PtsRowObserver(PtsErrorObserver):
    """PTS pass 2 that also records the narrowest row (token) seen, in the input's units, and
    keeps the rows of the `pooled` tokens (axis 1 of a [B, N, C] input) the head reads."""

    def __init__(self, *args, pooled: tuple[int, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.narrowest = np.inf
        self.pooled, self.pooled_rows = pooled, []

    def _update(self, x, lo, hi):
        super()._update(x, lo, hi)
        rows = np.moveaxis(np.asarray(x), self.axis, -1).reshape(-1, x.shape[self.axis])
        if rows.size:
            self.narrowest = min(self.narrowest, float((rows.max(1) - rows.min(1)).min()))
        if self.pooled and np.ndim(x) == 3 and self.axis in (-1, 2):
            self.pooled_rows.append(np.asarray(x)[:, list(self.pooled)].reshape(-1, x.shape[-1]))

    def pooled_sqnr_db(self) -> float | None:
        """SQNR of the (unscaled) LayerNorm of the pooled tokens' PTS-coded input against that
        of their float input: what the head's input keeps through the input coding."""
        if not self.pooled_rows:
            return None
        x = np.concatenate(self.pooled_rows).astype(np.float64)
        scales = pts_candidate_scales(self.scale, self.levels)[self.alphas()]
        xq = fake_quant(x, scales, self.zero_point, *qrange(self.bits, self.signed))
        ref, got = _normalise(x), _normalise(xq)
        return sqnr(ref, got)

    def thin_rows(self) -> str | None:
        """Why PTS would erase some tokens of this input, or None when every row is wide enough."""
        pooled = self.pooled_sqnr_db()
        if pooled is not None and pooled < MIN_POOLED_SQNR_DB:
            many = len(self.pooled) > 1
            return (f"PTS: token{'s' if many else ''} {', '.join(map(str, self.pooled))}, which "
                    f"the head reads, keep{'' if many else 's'} only {pooled:.1f} dB "
                    f"through the layer-wise input steps (s = {self.scale:.3g}, narrowest token "
                    f"{self.narrowest / self.scale:.2g} steps), under {MIN_POOLED_SQNR_DB:g} dB, "
                    f"so this LayerNorm keeps float")
        steps = self.narrowest / self.scale
        if steps >= MIN_ROW_STEPS:
            return None
        return (f"PTS: the narrowest token spans {steps:.2g} of the layer-wise steps "
                f"(s = {self.scale:.3g}, range {self.lo:.3g}..{self.hi:.3g}); IntLayerNorm would "
                f"output beta alone for it, so this LayerNorm keeps float")


def _normalise(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(-1, keepdims=True)
    return centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + 1e-6)


def pooled_tokens(model, output: str) -> tuple[int, ...]:
    """The token indices read from a LayerNorm's output when every reader is a Gather of a
    constant index on axis 1 (class-token pooling: `x[:, 0]`, DeiT-distilled's `x[:, 0]` and
    `x[:, 1]`); () when anything reads it otherwise."""
    from onnx import numpy_helper

    graph = model.graph
    readers = [n for n in graph.node if output in n.input]
    consts = {t.name: t for t in graph.initializer}
    consts.update({n.output[0]: a.t for n in graph.node if n.op_type == "Constant"
                   for a in n.attribute if a.name == "value"})
    tokens = []
    for n in readers:
        axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
        index = consts.get(n.input[1]) if n.op_type == "Gather" and len(n.input) > 1 else None
        if index is None or axis != 1 or n.input[0] != output:
            return ()
        value = numpy_helper.to_array(index)
        if value.size != 1:
            return ()
        tokens.append(int(value.reshape(-1)[0]))
    return tuple(sorted(set(tokens)))
