"""SmoothQuant's alpha search (`calibrate/smooth.py`) and `QuantConfig(smooth=True)` end to end."""

from __future__ import annotations

import numpy as np
import pytest

from onnxvq.calibrate.smooth import RowSample, output_error, search_alpha
from onnxvq.core.config import QuantConfig
from onnxvq.core.runtime import make_session, random_inputs
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.quantizer.run import quantize

RNG = np.random.default_rng(0)


def _outlier_activation(n=2048, c=32, d=16):
    """LayerNorm-like rows with two channels 40x larger than the rest (the ViT outliers)."""
    x = RNG.standard_normal((n, c))
    x[:, [3, 17]] *= 40.0
    return x, RNG.standard_normal((c, d)) * 0.1


def test_search_finds_a_smoothing_that_cuts_the_output_error():
    x, w = _outlier_activation()
    sm = search_alpha(x, np.abs(x).max(0), [w], a_bits=8, w_bits=8)
    assert sm.factors is not None and 0.1 <= sm.alpha <= 0.95
    assert sm.error_after < 0.25 * sm.error_before  # the outliers no longer set the scale
    assert sm.error_after == pytest.approx(output_error(x, [w], sm.factors, 8, 8, False))
    assert sm.factors[3] > 5 * np.median(sm.factors)  # outlier channels divided the most


def test_search_keeps_the_plain_model_when_nothing_helps():
    """Channels of equal range and equal weights: every alpha only adds weight error."""
    x = RNG.uniform(-1, 1, (1024, 16))
    x[0] = 1.0  # every channel spans [-1, 1] exactly
    x[1] = -1.0
    w = np.ones((16, 4))
    sm = search_alpha(x, np.abs(x).max(0), [w], a_bits=8, w_bits=8)
    assert sm.factors is None or sm.error_after <= sm.error_before


def test_row_sample_keeps_max_and_an_even_stride():
    obs = RowSample("t", rows=100)
    data = np.arange(1000 * 4, dtype=np.float32).reshape(10, 100, 4)
    for batch in data:
        obs.update(batch)
    np.testing.assert_array_equal(obs.absmax, np.abs(data.reshape(-1, 4)).max(0))
    rows = obs.sample()
    assert 100 <= len(rows) <= 200
    idx = rows[:, 0] / 4
    assert np.all(np.diff(idx) == idx[1] - idx[0])  # evenly strided over all 1,000 rows


@pytest.mark.parametrize("target", ["ort", "trt"])
def test_smooth_quantize_folds_and_stays_close(target):
    """The pre-norm tiny ViT: every LayerNorm feeding only Linears is smoothed (the final one
    feeds the head through the class-token Gather); the float fold is checked to 1e-4 inside
    the pipeline, and the quantized model stays close to FP32."""
    fp32 = build_tiny_vit(TinyViTConfig(depth=2))
    cfg = QuantConfig(smooth=True, target=target, calib_size=8, batch_size=4)
    result = quantize(fp32, None, cfg)
    smooth = next(p for p in result.passes if p.pass_id == "smooth-linear-inputs")
    assert smooth.applied + smooth.counts.get("unsmoothed", 0) == 5  # 2 x (ln1, ln2) + final
    a, b = make_session(fp32), make_session(result.model)
    feeds = random_inputs(a, batch=2)
    ref, out = a.run(None, feeds)[0], b.run(None, feeds)[0]
    assert np.corrcoef(ref.ravel(), out.ravel())[0, 1] > 0.95


def test_recipe_smooth_is_one_switch():
    cfg = QuantConfig(recipe="smooth")
    assert (cfg.smooth, cfg.bias_correction, cfg.center, cfg.method) == (True, True, True, "minmax")
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg  # the sidecar round trip
