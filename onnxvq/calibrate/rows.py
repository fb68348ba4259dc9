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

from onnxvq.calibrate.pts import PtsErrorObserver

# A row spanning under one layer-wise step is coded as at most two values: IntLayerNorm then
# returns beta or noise for it. Measured narrowest tokens (random weights, noise calibration):
# DINOv2 reg4 2e-4..0.93 steps; DeiT-III 3e-4..1.2 (its final norm, kept integer at 1.2 steps,
# alone costs 0.9 dB and the fidelity gate refuses it); the tiny test ViTs 1.0..4.9 (11 dB).
MIN_ROW_STEPS = 1.0


class PtsRowObserver(PtsErrorObserver):
    """PTS pass 2 that also records the narrowest row (token) seen, in the input's units."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.narrowest = np.inf

    def _update(self, x, lo, hi):
        super()._update(x, lo, hi)
        rows = np.moveaxis(np.asarray(x), self.axis, -1).reshape(-1, x.shape[self.axis])
        if rows.size:
            self.narrowest = min(self.narrowest, float((rows.max(1) - rows.min(1)).min()))

    def thin_rows(self) -> str | None:
        """Why PTS would erase some tokens of this input, or None when every row is wide enough."""
        steps = self.narrowest / self.scale
        if steps >= MIN_ROW_STEPS:
            return None
        return (f"PTS: the narrowest token spans {steps:.2g} of the layer-wise steps "
                f"(s = {self.scale:.3g}, range {self.lo:.3g}..{self.hi:.3g}); IntLayerNorm would "
                f"output beta alone for it, so this LayerNorm keeps float")
