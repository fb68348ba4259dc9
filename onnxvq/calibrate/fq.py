"""Calibration of the quantizers that PTS (IntLayerNorm) and LIS (LogIntSoftmax) introduce.

Observers see the float activations of the FP32 model, over all calibration data:

- LayerNorm input (PTS): run 1 takes the exact tensor min/max -> layer-wise (s, zp); run 2 over the
  same data accumulates, per channel, the squared error of each candidate `2^alpha * s/8`
  (`PtsErrorObserver`); alpha_c is the argmin. Two runs, but exact (the histogram variant is not).
- LayerNorm output: the configured method (what the IntLayerNorm codes mean); when the output is
  also a linear input site its qparams are reused, so the DQ -> Q between them is an identity.
- attention scores (Softmax input): the configured method, symmetric signed (LogIntSoftmax's int8
  input), then `softmax_constants(S, attention_bits)`. LogIntSoftmax needs S < ln 2; scores wider
  than +-127 ln 2 (the first block of a post-norm ViT sees the raw residual stream) get int32
  codes on the same range with 2^15 - 1 levels per side instead of refusing LIS.
- attention values (A·V's V): the configured method, the activation dtype of the target.

The calibrated parameters are plain frozen records (`FqParams`) that the replace-layernorm and
replace-softmax passes read from the pass context and the sidecar records.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

import onnx

from onnxvq.calibrate.collect import collect
from onnxvq.calibrate.observers import MinMaxObserver, Observer
from onnxvq.calibrate.pts import pts_layer_qparams
from onnxvq.calibrate.rows import PtsRowObserver, pooled_tokens
from onnxvq.core.config import QuantConfig
from onnxvq.core.errors import OnnxvqError
from onnxvq.core.params import (  # noqa: F401  (re-exported: the records calibration fills)
    PTS_LEVELS,
    WIDE_SCORE_LEVELS,
    FqParams,
    LayerNormQuant,
    QuantPlan,
    SoftmaxQuant,
)
from onnxvq.plugins.reference import softmax_constants
from onnxvq.recognise.structure import ViTStructure

log = logging.getLogger(__name__)
WIDE_SCORE_STEP = math.log(2.0)  # softmax_constants needs a score step below ln 2


class _Tee(Observer):
    """A site observer that also keeps the exact min/max (a LayerNorm input that is also a site)."""

    def __init__(self, main: Observer, exact: MinMaxObserver):
        super().__init__(main.name)
        self.main, self.exact = main, exact

    def _update(self, x, lo, hi):
        self.main.update(x)
        self.exact.update(x)

    def range(self):
        return self.main.range()

    def qparams(self, bits: int = 8, symmetric: bool = False, signed: bool = False):
        return self.main.qparams(bits, symmetric=symmetric, signed=signed)


class FqCalibration:
    """What PTS/LIS observe in the main calibration run, and the second (PTS) run."""

    def __init__(self, plan: QuantPlan, structure: ViTStructure, cfg: QuantConfig):
        self.cfg = cfg
        self.norms = [ln for ln in structure.layernorms if ln.node in set(plan.layernorms)]
        self.attentions = [a for a in structure.attentions if a.softmax in set(plan.softmaxes)]
        self._ln_inputs = {ln.input for ln in self.norms}

    @property
    def tensors(self) -> list[str]:
        names = [t for ln in self.norms for t in (ln.input, ln.output)]
        names += [t for a in self.attentions for t in (a.scores, a.v)]
        return list(dict.fromkeys(names))

    def observer_factory(self, base: Callable[[str], Observer],
                         sites: set[str]) -> Callable[[str], Observer]:
        """Observers for run 1: LayerNorm inputs need the exact range, the rest `base`."""
        def make(name: str) -> Observer:
            if name not in self._ln_inputs:
                return base(name)
            exact = MinMaxObserver(name)
            return _Tee(base(name), exact) if name in sites else exact
        return make

    def finish(self, model: onnx.ModelProto, observers: dict, site_qparams: dict,
               feeds: Iterable) -> FqParams:
        """Turn run-1 statistics into parameters; runs PTS run 2 over `feeds` when needed."""
        params = FqParams()
        if self.norms:
            self._layernorms(model, observers, site_qparams, feeds, params)
        for att in self.attentions:
            try:
                params.softmaxes[att.softmax] = self._softmax(att, observers)
            except OnnxvqError as exc:
                params.refused[att.softmax] = str(exc)
                log.warning("%s keeps a float softmax: %s", att.softmax, exc)
        return params

    def _act_qparams(self, obs: Observer) -> tuple[float, int, str]:
        signed = self.cfg.symmetric
        scale, zp = obs.qparams(self.cfg.a_bits, symmetric=signed, signed=signed)
        return float(scale), int(zp), "int8" if signed else "uint8"

    def _layernorms(self, model, observers, site_qparams, feeds, params: FqParams) -> None:
        bits, signed = self.cfg.a_bits, self.cfg.symmetric
        layer = {}
        for ln in self.norms:
            obs = observers[ln.input]
            exact = obs.exact if isinstance(obs, _Tee) else obs
            layer[ln.input] = pts_layer_qparams(*exact.range(), bits, signed=signed)
        pooled = {ln.input: pooled_tokens(model, ln.output) for ln in self.norms}
        errors = collect(model, list(layer), feeds, lambda n: PtsRowObserver(
            n, *layer[n], bits=bits, levels=PTS_LEVELS, signed=signed, pooled=pooled[n]))
        for ln in self.norms:
            scale, zp = layer[ln.input]
            thin = errors[ln.input].thin_rows()  # tokens PTS would erase (calibrate/rows.py)
            if thin is not None:
                params.refused[ln.node] = thin
                log.warning("%s keeps a float LayerNorm: %s", ln.node, thin)
                continue
            site = site_qparams.get(ln.output)
            if site is not None:
                out = (site.scale, site.zero_point, site.dtype)
            else:
                out = self._act_qparams(observers[ln.output])
            alpha = tuple(int(a) for a in errors[ln.input].alphas())
            params.layernorms[ln.node] = LayerNormQuant(
                ln.node, ln.input, ln.output, float(scale), int(zp), alpha, *out,
                in_dtype="int8" if signed else "uint8")

    def _softmax(self, att, observers) -> SoftmaxQuant:
        obs = observers[att.scores]
        levels = 2 ** (self.cfg.a_bits - 1) - 1
        s_scores, _ = obs.qparams(self.cfg.a_bits, symmetric=True, signed=True)
        dtype = "int8"
        if max(abs(v) for v in obs.range()) == 0.0:
            # A dead attention (q or k all zero; 3 of the 4 blocks of the CIFAR CCT) has all-zero
            # scores: any scale codes them exactly, but the guarded 1.0 is outside (0, ln 2).
            s_scores = 1.0 / levels
        elif s_scores >= WIDE_SCORE_STEP:
            s_scores, dtype = s_scores * levels / WIDE_SCORE_LEVELS, "int32"
            log.info("%s: scores span +-%.0f, int32 codes", att.softmax,
                     s_scores * WIDE_SCORE_LEVELS)
        consts = softmax_constants(float(s_scores), self.cfg.attention_bits,
                                   self.cfg.lis_octave_steps)
        v_scale, v_zp, v_dtype = self._act_qparams(observers[att.v])
        return SoftmaxQuant(att.softmax, att.scores, att.v, float(s_scores), dtype, v_scale, v_zp,
                            v_dtype, consts)
